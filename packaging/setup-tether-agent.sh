# tether-agent's state directory and the place of its enrollment flags, as
# the Debian package's postinst and the tarball's install.sh both make them.
install -d -m 0700 /var/lib/tether-agent
install -d -m 0755 /etc/tether
