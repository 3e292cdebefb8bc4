# tetherd's system user and data directory, as the Debian package's
# postinst and the tarball's install.sh both make them. Safe to run again.
if ! getent passwd tether >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/tether --no-create-home \
    --shell /usr/sbin/nologin --comment "tether controller" tether
fi
# A `tether` that is someone's login (home elsewhere) would run tetherd and
# own its CA key, and a purge would delete that person's account.
if [ "$(getent passwd tether | cut -d: -f6)" != /var/lib/tether ]; then
  echo "failed to set up tetherd: the user 'tether' exists with home $(getent passwd tether | cut -d: -f6), not tetherd's system user (home /var/lib/tether); rename that user, then install again" >&2
  exit 1
fi
install -d -m 0700 -o tether -g tether /var/lib/tether
# Data an earlier install left (a purge hands it to root) belongs to the
# user made now. Only then: on an upgrade nothing is chowned, so tetherd's
# own user cannot have root chown what it planted (a hard link, a swapped
# directory). chown -R -h walks by directory handles and never follows a
# symlink.
if [ -n "$(find /var/lib/tether -xdev ! -user tether -print -quit)" ]; then
  chown -R -h tether:tether /var/lib/tether
fi
# The config may hold a database password: readable by tetherd, not by all.
chown root:tether /etc/tether/tetherd.toml
chmod 0640 /etc/tether/tetherd.toml
