# tetherd's system user and data directory, as the Debian package's
# postinst and the tarball's install.sh both make them. Safe to run again.
if ! getent passwd tether >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/tether --no-create-home \
    --shell /usr/sbin/nologin --comment "tether controller" tether
fi
install -d -m 0700 -o tether -g tether /var/lib/tether
# Data an earlier install left (a purge keeps it) belongs to the user made now.
# -h: a symlink in there (planted by whoever got the old uid after a purge)
# is given to tether itself, not what it points to.
find /var/lib/tether -xdev ! -user tether -exec chown -h tether:tether {} +
# The config may hold a database password: readable by tetherd, not by all.
chown root:tether /etc/tether/tetherd.toml
chmod 0640 /etc/tether/tetherd.toml
