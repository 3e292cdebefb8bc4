//! The container images `scripts/release` writes without an engine
//! (issue 21, ADR 0036), as a site with no network and no registry gets
//! them: read by skopeo in both formats the archive carries, unpacked with
//! umoci into a runtime bundle and run with runc in a throwaway machine
//! with only loopback (`testkit::sandbox`): tetherd's image serves, the
//! agent's image enrolls with it and answers an action. The images must be
//! what the Containerfiles build (user, entrypoint, ports, volumes, files),
//! so the two cannot drift, and rebuilding gives the same bytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::sandbox::Sandbox;

use crate::install::{Running, assert_stayed_on_the_machine, release, traced};

const VERSION: &str = "0.1.0";

/// What the final stage of a Containerfile says the image is.
#[derive(Debug, Default)]
struct Stage {
    user: String,
    entrypoint: Vec<String>,
    env: Vec<String>,
    exposed: Vec<String>,
    volumes: Vec<String>,
    /// Where each COPY puts a file or directory.
    copied: Vec<String>,
}

/// The last stage of `crates/<crate>/Containerfile`: the image it builds
/// by default.
fn final_stage(krate: &str) -> anyhow::Result<Stage> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../{krate}/Containerfile"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let joined = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().collect();
    let last = lines
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .context("a FROM line")?;
    let mut stage = Stage::default();
    for line in &lines[last + 1..] {
        let Some((instruction, rest)) = line.trim().split_once(' ') else {
            continue;
        };
        let mut words = rest.split_whitespace().map(str::to_owned);
        match instruction {
            "USER" => stage.user = rest.trim().to_owned(),
            "ENTRYPOINT" => stage.entrypoint = serde_json::from_str(rest)?,
            "ENV" => stage.env.extend(words),
            "EXPOSE" => stage.exposed.extend(words.map(|port| {
                if port.contains('/') {
                    port
                } else {
                    format!("{port}/tcp")
                }
            })),
            "VOLUME" => stage.volumes.extend(words),
            "COPY" => stage.copied.extend(words.next_back()),
            _ => {}
        }
    }
    Ok(stage)
}

/// The image's config as the archive carries it, through both of its
/// formats: the same blob either way.
fn inspect(sandbox: &Sandbox, archive: &str) -> anyhow::Result<Value> {
    let oci: Value = serde_json::from_str(
        &sandbox.run(&format!("skopeo inspect --config oci-archive:{archive}"))?,
    )?;
    let docker: Value = serde_json::from_str(
        &sandbox.run(&format!("skopeo inspect --config docker-archive:{archive}"))?,
    )?;
    assert_eq!(oci, docker, "{archive}: one config in both formats");
    Ok(oci)
}

/// Checks an image's config against its Containerfile and the release.
fn assert_matches(config: &Value, stage: &Stage, title: &str, revision: &str) {
    let run = &config["config"];
    assert_eq!(config["architecture"], "amd64", "{title}'s architecture");
    assert_eq!(config["os"], "linux");
    assert_eq!(run["User"], stage.user.as_str(), "{title}'s USER");
    assert_eq!(
        run["Entrypoint"],
        json!(stage.entrypoint),
        "{title}'s ENTRYPOINT"
    );
    let keys = |value: &Value| -> Vec<String> {
        value
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        keys(&run["ExposedPorts"]),
        stage.exposed,
        "{title}'s EXPOSE"
    );
    assert_eq!(keys(&run["Volumes"]), stage.volumes, "{title}'s VOLUME");
    for env in &stage.env {
        assert!(
            run["Env"]
                .as_array()
                .is_some_and(|all| all.contains(&json!(env))),
            "{title}'s ENV {env}: {}",
            run["Env"]
        );
    }
    // distroless's working directory, the nonroot user's home.
    assert_eq!(run["WorkingDir"], "/home/nonroot");
    let labels = &run["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], title);
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.revision"], revision);
    assert!(labels["org.opencontainers.image.source"].is_string());
}

/// Every file of an unpacked root file system: owner, mode, path.
fn listing(sandbox: &Sandbox, rootfs: &str) -> anyhow::Result<String> {
    sandbox.run(&format!(
        "cd {rootfs} && find . -mindepth 1 | sort | xargs stat -c '%u:%g %a %n'"
    ))
}

/// Makes umoci's runtime config runnable here, changing only where the
/// image runs, not how: it shares the sandbox's network (loopback only,
/// so tether's own loopback addresses reach it), the volume is the
/// image's directory (as a new Docker volume starts as a copy of it), and
/// the host's C library is mounted in because a test packages debug
/// builds, which are dynamically linked; a release's are static.
fn runnable(sandbox: &Sandbox, bundle: &str, mounts: &[(&str, &str)]) -> anyhow::Result<Value> {
    let path = sandbox.path(&format!("{bundle}/config.json"));
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let original = config.clone();
    config["process"]["terminal"] = json!(false);
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|namespace| namespace["type"] != "network");
    }
    let volumes: Vec<String> = original["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|mount| mount["source"] == "none" && mount["type"] == "tmpfs")
        .filter_map(|mount| mount["destination"].as_str().map(str::to_owned))
        .collect();
    if let Some(all) = config["mounts"].as_array_mut() {
        all.retain(|mount| {
            !volumes
                .iter()
                .any(|volume| mount["destination"] == volume.as_str())
        });
        for (source, destination) in [
            ("/lib64", "/lib64"),
            ("/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"),
        ]
        .into_iter()
        .chain(mounts.iter().copied())
        {
            all.push(
                json!({"destination": destination, "type": "bind", "source": source,
                            "options": ["rbind", "ro"]}),
            );
        }
    }
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(original["process"].clone())
}

/// A container run with runc in the sandbox, deleted (killed) with the test.
struct Container<'a> {
    sandbox: &'a Sandbox,
    name: String,
    _runc: Running,
}

impl<'a> Container<'a> {
    fn run(sandbox: &'a Sandbox, image: &str, bundle: &str) -> anyhow::Result<Self> {
        // The cgroup hierarchy is the host's: a name of this run's own.
        let name = format!("{image}-{}", std::process::id());
        let runc = Running::spawn(sandbox.command(&traced(&format!(
            "runc run --bundle {bundle} {name} > /tmp/{image}.log 2>&1"
        ))))?;
        Ok(Self {
            sandbox,
            name,
            _runc: runc,
        })
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .sandbox
            .run(&format!("runc delete --force {}", self.name));
    }
}

/// The image archives' lines of a release's SHA256SUMS.
fn image_sums(out: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let sums = std::fs::read_to_string(out.join("SHA256SUMS"))?;
    Ok(sums
        .lines()
        .filter_map(|line| line.split_once("  "))
        .filter(|(_, name)| name.ends_with(".image.tar"))
        .map(|(sum, name)| (name.to_owned(), sum.to_owned()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_archives_load_run_offline_and_match_their_containerfiles() -> anyhow::Result<()>
{
    let (out, again) = (tempfile::tempdir()?, tempfile::tempdir()?);
    release(out.path())?;
    release(again.path())?;
    let sums = image_sums(out.path())?;
    assert_eq!(
        sums.keys().collect::<Vec<_>>(),
        [
            &format!("tether-agent-{VERSION}-amd64.image.tar"),
            &format!("tetherd-{VERSION}-amd64.image.tar")
        ],
        "both images, in SHA256SUMS"
    );
    assert_eq!(
        sums,
        image_sums(again.path())?,
        "a rebuild gives the same bytes"
    );
    let revision = String::from_utf8(
        std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
            .output()?
            .stdout,
    )?;

    let sandbox = Sandbox::create()?;
    // runc needs the cgroup file system; the sandbox starts without /sys.
    sandbox.run("mount -t sysfs sysfs /sys && mount -t cgroup2 cgroup2 /sys/fs/cgroup")?;
    let server = sandbox.carry_in(
        &out.path()
            .join(format!("tetherd-{VERSION}-amd64.image.tar")),
    )?;
    let agent = sandbox.carry_in(
        &out.path()
            .join(format!("tether-agent-{VERSION}-amd64.image.tar")),
    )?;

    for (archive, title, krate) in [
        (&server, "tetherd", "server"),
        (&agent, "tether-agent", "agent"),
    ] {
        let stage = final_stage(krate)?;
        assert_matches(&inspect(&sandbox, archive)?, &stage, title, revision.trim());
        // The names docker load (manifest.json), podman and ctr (index.json) give it.
        let tags: Value =
            serde_json::from_str(&sandbox.run(&format!("tar -xOf {archive} manifest.json"))?)?;
        assert_eq!(tags[0]["RepoTags"], json!([format!("{title}:{VERSION}")]));
        let index: Value =
            serde_json::from_str(&sandbox.run(&format!("tar -xOf {archive} index.json"))?)?;
        let reference = format!("docker.io/library/{title}:{VERSION}");
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(
            annotations["org.opencontainers.image.ref.name"],
            reference.as_str()
        );
        assert_eq!(annotations["io.containerd.image.name"], reference.as_str());
        // The agent's image through the Docker format, tetherd's through
        // the OCI one, into one OCI layout that umoci unpacks.
        let source = if title == "tetherd" {
            format!("oci-archive:{archive}")
        } else {
            format!("docker-archive:{archive}")
        };
        sandbox.run(&format!(
            "skopeo copy -q {source} oci:/root/images:{title} && umoci unpack --image /root/images:{title} /root/{title}"
        ))?;
        let files = listing(&sandbox, &format!("/root/{title}/rootfs"))?;
        // What the Containerfile copies is there (kubectl is not fetched
        // by the release: scripts/release adds it from KUBECTL).
        for copied in stage
            .copied
            .iter()
            .filter(|path| !path.ends_with("/kubectl"))
        {
            assert!(
                files.contains(&format!(" .{copied}\n")),
                "{title} has {copied}:\n{files}"
            );
        }
    }

    // Owners and modes, and nothing else in the images.
    let common =
        "0:0 755 ./etc\n0:0 644 ./etc/group\n0:0 644 ./etc/nsswitch.conf\n0:0 644 ./etc/passwd\n";
    let home = "0:0 755 ./home\n65532:65532 700 ./home/nonroot\n0:0 1777 ./tmp\n";
    assert_eq!(
        listing(&sandbox, "/root/tetherd/rootfs")?,
        format!(
            "{common}0:0 755 ./etc/tether\n{home}0:0 755 ./usr\n0:0 755 ./usr/bin\n0:0 755 ./usr/bin/tetherd\n\
             0:0 755 ./var\n0:0 755 ./var/lib\n65532:65532 700 ./var/lib/tether\n"
        )
    );
    assert_eq!(
        listing(&sandbox, "/root/tether-agent/rootfs")?,
        format!(
            "{common}{home}0:0 755 ./usr\n0:0 755 ./usr/local\n0:0 755 ./usr/local/bin\n\
             0:0 755 ./usr/local/bin/tether-agent\n0:0 755 ./usr/local/bin/tether-agent-render\n\
             0:0 755 ./usr/local/bin/tether-agent-restore\n0:0 755 ./usr/local/bin/tether-agent-shell\n\
             0:0 755 ./var\n0:0 755 ./var/lib\n65532:65532 700 ./var/lib/tether-agent\n"
        )
    );
    assert_eq!(
        sandbox
            .run("grep nonroot /root/tetherd/rootfs/etc/passwd /root/tetherd/rootfs/etc/group")?,
        "/root/tetherd/rootfs/etc/passwd:nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n\
         /root/tetherd/rootfs/etc/group:nonroot:x:65532:\n"
    );

    // tetherd's image as its Containerfile's header runs it: the config
    // mounted at /etc/tether, the data in the volume.
    // The host's binaries are carried in: the sandbox sees the host's
    // root, but not its /tmp, where a checkout may be.
    let tetherd = carry_binary(&sandbox, "tetherd")?;
    sandbox.run(&format!(
        "{tetherd} --print-config --data-dir /var/lib/tether --public-host 127.0.0.1 > /root/tetherd.toml"
    ))?;
    let process = runnable(
        &sandbox,
        "/root/tetherd",
        &[("/root/tetherd.toml", "/etc/tether/tetherd.toml")],
    )?;
    let stage = final_stage("server")?;
    assert_eq!(
        process["user"],
        json!({"uid": 65532, "gid": 65532}),
        "umoci runs it as USER"
    );
    assert_eq!(process["args"], json!(stage.entrypoint));
    assert_eq!(process["cwd"], "/home/nonroot");
    let _server = Container::run(&sandbox, "tetherd", "/root/tetherd")?;
    let data = "/root/tetherd/rootfs/var/lib/tether";
    sandbox
        .wait_for(
            "tetherd's image to answer",
            Duration::from_secs(30),
            &format!("curl -sf --cacert {data}/ca.pem https://127.0.0.1:8443/readyz"),
        )
        .await?;
    assert_eq!(
        sandbox.run(&format!("stat -c '%u %a' {data} {data}/ca-key.pem"))?,
        "65532 700\n65532 600\n",
        "the data belong to the image's user"
    );

    // The agent's image enrolls with it and answers an action.
    let cli = carry_binary(&sandbox, "tether")?;
    sandbox.run(&format!(
        r#"sed -n 's/^password = "\(.*\)"/\1/p' {data}/admin-credentials.toml > /root/password"#
    ))?;
    sandbox.run(&traced(&format!(
        "{cli} login https://127.0.0.1:8443 --ca-file {data}/ca.pem --password-stdin < /root/password"
    )))?;
    let added: Value = serde_json::from_str(
        &sandbox.run(&traced(&format!("{cli} devices add cluster-1 -o json")))?,
    )?;
    let token = added["enrollment"]["token"].as_str().context("a token")?;
    let ca = added["enrollment"]["caSha256"]
        .as_str()
        .context("the CA's fingerprint")?;
    let process = runnable(&sandbox, "/root/tether-agent", &[])?;
    assert_eq!(process["user"], json!({"uid": 65532, "gid": 65532}));
    assert_eq!(process["args"], json!(final_stage("agent")?.entrypoint));
    // What the operator gives the container (the join manifest does the
    // same through its env).
    let path = sandbox.path("/root/tether-agent/config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    if let Some(env) = config["process"]["env"].as_array_mut() {
        env.extend([
            json!("TETHER_SERVER=https://127.0.0.1:8443"),
            json!(format!("TETHER_ENROLL_TOKEN={token}")),
            json!(format!("TETHER_CA_SHA256={ca}")),
        ]);
    }
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    let _agent = Container::run(&sandbox, "tether-agent", "/root/tether-agent")?;
    let answer: Value = serde_json::from_str(&sandbox.run(&traced(&format!(
        "{cli} actions run cluster-1 get-node-ip --wait -o json"
    )))?)?;
    assert_eq!(answer["statusCode"], 200, "get-node-ip's answer: {answer}");
    assert_eq!(
        sandbox.run("stat -c '%u %a' /root/tether-agent/rootfs/var/lib/tether-agent")?,
        "65532 700\n",
        "the agent keeps its state in its image's directory"
    );
    assert_stayed_on_the_machine(&sandbox)?;
    Ok(())
}

/// This build's binary `name`, copied into the sandbox; its path there.
fn carry_binary(sandbox: &Sandbox, name: &str) -> anyhow::Result<String> {
    let inside = format!("/root/bin/{name}");
    std::fs::create_dir_all(sandbox.path("/root/bin"))?;
    std::fs::copy(
        tether_testkit::binaries::binary(name)?,
        sandbox.path(&inside),
    )
    .with_context(|| format!("carrying {name} into the sandbox"))?;
    Ok(inside)
}

/// packaging/oci-image.py building tetherd's image from `binaries` into
/// `out`, the files it writes limited to `file_size_limit` blocks
/// (`ulimit -f`).
fn tetherd_image_builder(
    binaries: &Path,
    out: &Path,
    file_size_limit: &str,
) -> std::process::Command {
    let builder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/oci-image.py");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -f {file_size_limit} && exec python3 \"$@\""
        ))
        .arg("sh")
        .arg(builder)
        .args([
            "--image",
            "tetherd",
            "--version",
            VERSION,
            "--arch",
            "amd64",
        ])
        .args(["--revision", "0000000", "--binaries"])
        .arg(binaries)
        .arg("--out")
        .arg(out);
    command
}

#[test]
fn the_image_builder_names_a_missing_binary() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let out = empty.path().join("tetherd.image.tar");
    let output = tetherd_image_builder(empty.path(), &out, "unlimited").output()?;
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8(output.stderr)?,
        format!(
            "failed to read the binary {}/tetherd for tetherd's image: No such file or directory\n",
            empty.path().display()
        )
    );
    assert!(!out.exists(), "no archive is left behind");
    Ok(())
}

/// A bad SOURCE_DATE_EPOCH and an archive that cannot be written whole
/// are refused naming the problem, and leave no archive, whole or
/// partial, for a later step to ship.
#[test]
fn the_image_builder_refuses_a_bad_epoch_and_a_full_disk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binaries = dir.path().join("bin");
    std::fs::create_dir(&binaries)?;
    std::fs::write(binaries.join("tetherd"), "#!/bin/true\n")?;
    let out = dir.path().join("tetherd.image.tar");
    // `ulimit -f` stands in for a full disk: Python ignores SIGXFSZ, so
    // the write past the limit fails (EFBIG) after the archive is begun.
    let build = |limit: &str, epoch: &str| -> anyhow::Result<std::process::Output> {
        Ok(tetherd_image_builder(&binaries, &out, limit)
            .env("SOURCE_DATE_EPOCH", epoch)
            .output()?)
    };
    let left = || -> anyhow::Result<Vec<String>> {
        std::fs::read_dir(dir.path())?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    };

    let output = build("unlimited", "yesterday")?;
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8(output.stderr)?,
        "SOURCE_DATE_EPOCH is 'yesterday': it must be seconds since 1970, a non-negative integer\n"
    );
    assert_eq!(left()?, ["bin"], "no archive is left behind");

    let output = build("8", "1700000000")?;
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8(output.stderr)?,
        format!(
            "failed to write the image archive {}: File too large\n",
            out.display()
        )
    );
    assert_eq!(left()?, ["bin"], "no partial archive is left behind");
    Ok(())
}
