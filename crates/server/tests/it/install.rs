//! Installing tether where there is no network (issue 21, ADR 0036): the
//! Debian packages and the tarball `scripts/release` makes from this
//! build's binaries, each installed in a throwaway machine with only
//! loopback (`testkit::sandbox`), then used as an operator would: tetherd
//! started as its unit starts it, an agent enrolled, an action run. Every
//! process is traced, and a connection attempted to any address but
//! loopback fails the test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tether_testkit::sandbox::Sandbox;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The release artifacts of this build's binaries, in `out`.
pub(crate) fn release(out: &Path) -> anyhow::Result<()> {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tetherd = tether_testkit::binaries::binary("tetherd")?;
    let binaries = tetherd.parent().context("the binaries' directory")?;
    let output = Command::new(repository.join("scripts/release"))
        .arg("--binaries")
        .arg(binaries)
        .args(["--target", TARGET, "--fast", "--out"])
        .arg(out)
        .output()
        .context("running scripts/release")?;
    anyhow::ensure!(
        output.status.success(),
        "scripts/release failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A process inside the sandbox with everything it started (strace, the
/// user switch, the binary: one process group), killed with the test.
pub(crate) struct Running(Child);

impl Running {
    pub(crate) fn spawn(mut command: Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        command
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(Self(command.spawn()?))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Killing strace alone would leave what it traces running.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// `script` under strace, every call that names an address appended to
/// /tmp/connects (one file for every process of the test): connections,
/// and datagrams sent without one (a resolver, QUIC).
pub(crate) fn traced(script: &str) -> String {
    format!("strace -f -qq -A -o /tmp/connects -e trace=connect,sendto,sendmsg,sendmmsg {script}")
}

/// The IP addresses other than loopback that traced calls named.
fn addresses_off_the_machine(trace: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in trace.lines() {
        for marker in ["inet_addr(\"", "inet_pton(AF_INET6, \""] {
            for (start, _) in line.match_indices(marker) {
                let rest = &line[start + marker.len()..];
                let address = rest.split('"').next().unwrap_or_default();
                let loopback = address.starts_with("127.")
                    || address == "::1"
                    || address.starts_with("::ffff:127.");
                if !loopback {
                    found.push(format!("{address}: {line}"));
                }
            }
        }
    }
    found
}

#[test]
fn any_address_off_the_machine_in_a_trace_is_found() {
    let trace = r#"12 connect(3, {sa_family=AF_UNIX, sun_path="/run/nscd/socket"}, 110) = -1 ENOENT
12 connect(5, {sa_family=AF_INET, sin_port=htons(8443), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
12 sendto(5, "abc", 3, MSG_NOSIGNAL, NULL, 0) = 3
13 sendto(6, "dns", 3, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("192.0.2.53")}, 16) = -1 ENETUNREACH
13 sendmsg(7, {msg_name={sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::53", &sin6_addr), sin6_scope_id=0}, msg_namelen=28}, 0) = -1 ENETUNREACH
14 connect(8, {sa_family=AF_INET6, sin6_port=htons(8443), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28) = 0
"#;
    let found = addresses_off_the_machine(trace);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("192.0.2.53: 13 sendto"));
    assert!(found[1].starts_with("2001:db8::53: 13 sendmsg"));
}

/// What an operator does once tether is installed: configure and start
/// tetherd as its unit does, log in, add a device, start its agent as its
/// unit does, run an action and read the answer.
async fn configure_start_enroll_and_act(sandbox: &Sandbox) -> anyhow::Result<Vec<Running>> {
    let verified = sandbox.run(
        "systemd-analyze verify /lib/systemd/system/tetherd.service /lib/systemd/system/tether-agent.service 2>&1",
    )?;
    assert_eq!(verified.trim(), "", "systemd-analyze verify has findings");
    sandbox.run(
        r#"sed -i 's|^# public_hosts = .*|public_hosts = ["127.0.0.1"]|' /etc/tether/tetherd.toml"#,
    )?;
    // As tetherd.service: its user, its config, its state directory.
    let tetherd = Running::spawn(sandbox.command(&traced(
        "runuser -u tether -- /usr/bin/tetherd --config /etc/tether/tetherd.toml > /tmp/tetherd.log 2>&1",
    )))?;
    sandbox
        .wait_for(
            "tetherd to answer",
            Duration::from_secs(30),
            "curl -sf --cacert /var/lib/tether/ca.pem https://127.0.0.1:8443/readyz",
        )
        .await?;
    let owner = sandbox.run("stat -c '%U %a' /var/lib/tether /var/lib/tether/ca-key.pem")?;
    assert_eq!(
        owner, "tether 700\ntether 600\n",
        "the data's owner and modes"
    );
    sandbox.run(r#"sed -n 's/^password = "\(.*\)"/\1/p' /var/lib/tether/admin-credentials.toml > /root/password"#)?;
    sandbox.run(&traced(
        "tether login https://127.0.0.1:8443 --ca-file /var/lib/tether/ca.pem --password-stdin < /root/password",
    ))?;
    let added: Value =
        serde_json::from_str(&sandbox.run(&traced("tether devices add gateway-1 -o json"))?)?;
    let token = added["enrollment"]["token"].as_str().context("a token")?;
    let ca = added["enrollment"]["caSha256"]
        .as_str()
        .context("the CA's fingerprint")?;
    sandbox.run(&format!(
        "umask 077 && printf 'TETHER_SERVER=https://127.0.0.1:8443\\nTETHER_ENROLL_TOKEN={token}\\nTETHER_CA_SHA256={ca}\\n' > /etc/tether/agent.env"
    ))?;
    // As tether-agent.service: root, its EnvironmentFile, its state dir.
    let agent = Running::spawn(sandbox.command(&traced(
        "sh -c 'set -a && . /etc/tether/agent.env && set +a && exec /usr/bin/tether-agent --state-dir /var/lib/tether-agent' > /tmp/agent.log 2>&1",
    )))?;
    let answer: Value = serde_json::from_str(&sandbox.run(&traced(
        "tether actions run gateway-1 get-node-ip --wait -o json",
    ))?)?;
    assert_eq!(answer["statusCode"], 200, "get-node-ip's answer: {answer}");
    let completion = sandbox
        .run("bash -c '. /usr/share/bash-completion/completions/tether && complete -p tether'")?;
    assert!(
        completion.contains("-F _tether"),
        "bash completes tether: {completion}"
    );
    Ok(vec![agent, tetherd])
}

/// Every connection any process tried: to loopback or a local socket only.
pub(crate) fn assert_stayed_on_the_machine(sandbox: &Sandbox) -> anyhow::Result<()> {
    let connects = std::fs::read_to_string(sandbox.path("/tmp/connects"))
        .context("reading the traced connections")?;
    let elsewhere = addresses_off_the_machine(&connects);
    assert!(
        elsewhere.is_empty(),
        "addresses off the machine were tried:\n{}",
        elsewhere.join("\n")
    );
    assert!(
        connects.contains("inet_addr(\"127.0.0.1\")"),
        "the trace saw the processes talk to each other"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_packages_install_run_offline_and_purge_keeping_data() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    release(out.path())?;
    let sandbox = Sandbox::create()?;
    let debs = ["tetherd", "tether-agent", "tether"]
        .iter()
        .map(|name| sandbox.carry_in(&out.path().join(format!("{name}_0.1.0_amd64.deb"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    sandbox.run(&format!("dpkg -i {}", debs.join(" ")))?;
    assert_eq!(
        sandbox
            .run("systemctl is-enabled tetherd 2>/dev/null || true")?
            .trim(),
        "disabled",
        "installing does not enable tetherd"
    );
    let running = configure_start_enroll_and_act(&sandbox).await?;
    assert_stayed_on_the_machine(&sandbox)?;
    drop(running);

    sandbox.run("dpkg --purge tether tether-agent tetherd")?;
    let left = sandbox.run(
        "for path in /usr/bin/tetherd /usr/bin/tether-agent /usr/bin/tether /etc/tether/tetherd.toml \
           /lib/systemd/system/tetherd.service /usr/share/bash-completion/completions/tether \
           /var/lib/tether/ca.pem /var/lib/tether-agent; do \
           [ -e $path ] && echo $path; done; getent passwd tether; getent group tether; true",
    )?;
    assert_eq!(
        left, "/var/lib/tether/ca.pem\n/var/lib/tether-agent\n",
        "a purge leaves the data, nothing else"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tarball_installs_and_runs_offline() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    release(out.path())?;
    let sandbox = Sandbox::create()?;
    let tarball = sandbox.carry_in(&out.path().join(format!("tether-0.1.0-{TARGET}.tar.gz")))?;
    sandbox.run(&format!(
        "cd /tmp && tar xzf {tarball} && ./tether-0.1.0-{TARGET}/install.sh"
    ))?;
    let running = configure_start_enroll_and_act(&sandbox).await?;
    assert_stayed_on_the_machine(&sandbox)?;
    drop(running);
    Ok(())
}

/// tetherd's unit is `Type=notify` with `WatchdogSec=`: tetherd says
/// READY=1 once it serves (not before: its API answers by then), pings the
/// watchdog at half the interval systemd gives it, and says STOPPING=1 on
/// SIGTERM; systemd's own socket is stood in for by a datagram socket.
#[tokio::test]
async fn tetherd_tells_systemd_it_is_ready_alive_and_stopping() -> anyhow::Result<()> {
    use std::os::unix::net::UnixDatagram;

    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path)?;
    systemd.set_read_timeout(Some(Duration::from_secs(60)))?;
    let next = || -> anyhow::Result<String> {
        let mut buffer = [0u8; 256];
        let n = systemd
            .recv(&mut buffer)
            .context("tetherd said nothing to systemd within 60 s")?;
        Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
    };
    let data_dir = dir.path().join("data");
    let mut tetherd = Command::new(tether_testkit::binaries::binary("tetherd")?)
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--listen-api",
            "127.0.0.1:0",
            "--listen-mqtt",
            "127.0.0.1:0",
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("TETHER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ready = next();
    // By READY=1 the API serves: what units ordered after tetherd rely on.
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("endpoints.json"))?)?;
    let api = endpoints["api"].as_str().context("the API's URL")?;
    let ca = std::fs::read(data_dir.join("ca.pem"))?;
    let health = tether_testkit::ApiClient::new(api, &ca, None)?
        .get("/readyz")
        .await?;
    let pings = [next(), next()];
    Command::new("kill")
        .args(["-TERM", &tetherd.id().to_string()])
        .status()?;
    let mut after_stop = Vec::new();
    while let Ok(said) = next() {
        after_stop.push(said);
        if after_stop.last().is_some_and(|s| s == "STOPPING=1") {
            break;
        }
    }
    tetherd.wait()?;

    assert_eq!(ready?, "READY=1");
    assert_eq!(health.status, 200, "the API serves once READY=1 is said");
    assert_eq!(
        pings.map(|ping| ping.ok()),
        [Some("WATCHDOG=1".to_owned()), Some("WATCHDOG=1".to_owned())]
    );
    assert_eq!(after_stop.last().map(String::as_str), Some("STOPPING=1"));
    Ok(())
}
