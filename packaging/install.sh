#!/bin/sh
# Installs tether from this tarball as its Debian packages do, for hosts
# without dpkg and for sites with no network: binaries in /usr/bin, units
# in /lib/systemd/system, tetherd's config in /etc/tether (an existing one
# is kept), its system user and data directory. Nothing is fetched and
# nothing is started.
#   ./install.sh                  tetherd, the agent and the command line
#   ./install.sh agent cli        only those parts
set -eu
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
  echo "failed to install tether: run as root (it writes /usr/bin, /etc and /var/lib)" >&2
  exit 1
fi
parts=${*:-tetherd agent cli}
# Over a Debian package the files would be dpkg's: its next upgrade or
# removal would overwrite or delete what this put there.
for part in $parts; do
  case $part in tetherd) package=tetherd ;; agent) package=tether-agent ;; *) package=tether ;; esac
  if command -v dpkg-query >/dev/null &&
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$package" 2>/dev/null)" = installed ]; then
    echo "failed to install tether: the Debian package $package is installed; upgrade it with its .deb (dpkg -i), or dpkg --purge it first" >&2
    exit 1
  fi
done
for part in $parts; do
  case $part in
    tetherd|agent|cli) ;;
    *) echo "failed to install tether: unknown part '$part' (tetherd, agent, cli)" >&2; exit 2 ;;
  esac
done
for part in $parts; do
  case $part in
    tetherd)
      install -m 0755 bin/tetherd /usr/bin/
      install -D -m 0644 systemd/tetherd.service /lib/systemd/system/tetherd.service
      install -d -m 0755 /etc/tether
      [ -e /etc/tether/tetherd.toml ] || install -m 0640 etc/tetherd.toml /etc/tether/
      . ./setup-tetherd.sh
      ;;
    agent)
      for bin in tether-agent tether-agent-restore tether-agent-shell tether-agent-render; do
        install -m 0755 "bin/$bin" /usr/bin/
      done
      install -D -m 0644 systemd/tether-agent.service /lib/systemd/system/tether-agent.service
      . ./setup-tether-agent.sh
      ;;
    cli)
      install -m 0755 bin/tether /usr/bin/
      install -D -m 0644 etc/tether.bash-completion /usr/share/bash-completion/completions/tether
      ;;
  esac
done
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed: $parts"
case " $parts " in *" tetherd "*)
  echo "tetherd: set public_hosts in /etc/tether/tetherd.toml, then: systemctl enable --now tetherd" ;;
esac
case " $parts " in *" agent "*)
  echo "agent: put the enrollment flags in /etc/tether/agent.env (etc/agent.env.example), then: systemctl enable --now tether-agent" ;;
esac
