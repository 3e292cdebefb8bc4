//! `tether os edit` on disk images the tests build themselves
//! (`testkit::disk_image`), read back with mtools and debugfs.

use std::path::PathBuf;

use tempfile::TempDir;
use tether_proto::provisioning::{BootBundle, BootCredential, PROVISIONING_KEY_KIND};
use tether_testkit::disk_image::{self, SECTOR};

use super::{Run, Tether, ca_der, tetherd};

/// 16 MiB: the boot partition at 1 MiB (8 MiB), a data partition after it.
const SECTORS: u64 = 32768;
const BOOT_FIRST: u64 = 2048;
const BOOT_SECTORS: u64 = 16384;
const BOOT_OFFSET: u64 = BOOT_FIRST * SECTOR;
const BOOT_LEN: u64 = BOOT_SECTORS * SECTOR;

const STATIC_NETPLAN: &str = "\
network:
  version: 2
  renderer: networkd
  ethernets:
    enp2s0:
      dhcp4: no
      addresses: [192.168.1.30/24]
      gateway4: 192.168.1.1
      nameservers:
        addresses: [192.168.1.1]
";
const NTP: &str = "[Time]\nNTP=ntp.example.com\nPollIntervalMinSec=32\n";
const DISKS: &str = "\
diskmappings:
  - disk: /dev/sdb1
    mountpoint: /isodevice/extra
    size: 1024
    filesystem: xfs
  - disk: /dev/disk/by-partlabel/EDGELQ_DATA
    mountpoint: /isodevice/data
    size: -1
    filesystem: ext4
bindmounts:
  - mountsource: /isodevice/data/docker
    mountpoint: /var/lib/docker
";

/// A temp dir with an image and input files.
struct Workspace {
    dir: TempDir,
    image: PathBuf,
}

impl Workspace {
    fn new(image: Vec<u8>) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("edge-os.raw");
        std::fs::write(&path, image).expect("writes the image");
        Workspace { dir, image: path }
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("writes an input file");
        path.to_string_lossy().into_owned()
    }

    fn key(&self) -> String {
        let key = serde_json::json!({
            "kind": PROVISIONING_KEY_KIND,
            "server": "https://tether.example:8443",
            "caSha256": "ab".repeat(32),
            "policy": "lab",
            "keyId": "key-1",
            "secret": "s3cret-of-the-key",
        });
        self.file("lab-key.json", &key.to_string())
    }

    fn image_arg(&self) -> String {
        self.image.to_string_lossy().into_owned()
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).expect("reads the image")
    }
}

/// A GPT image with the boot partition named `boot_name` and a data
/// partition of pattern bytes.
fn gpt_image(boot_name: &str) -> Vec<u8> {
    disk_image::gpt(
        SECTORS,
        &[
            (boot_name, BOOT_FIRST, BOOT_FIRST + BOOT_SECTORS - 1),
            ("EDGELQ_DATA", 20480, 30719),
        ],
    )
}

/// Every byte outside `offset..offset + len` is as it was.
fn assert_only_changed(before: &[u8], after: &[u8], offset: u64, len: u64) {
    let (start, end) = (offset as usize, (offset + len) as usize);
    assert_eq!(before.len(), after.len(), "the image kept its size");
    assert!(
        before[..start] == after[..start],
        "bytes before the boot partition changed"
    );
    assert!(
        before[end..] == after[end..],
        "bytes after the boot partition changed"
    );
    assert!(
        before[start..end] != after[start..end],
        "the boot partition was written"
    );
}

fn assert_failed_untouched(run: &Run, before: &[u8], workspace: &Workspace, expected: &[&str]) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    for part in expected {
        assert!(run.stderr.contains(part), "{part:?} not in: {}", run.stderr);
    }
    assert!(
        workspace.bytes() == before,
        "the image changed: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn os_edit_writes_a_fat_boot_partition_and_nothing_else() {
    let workspace = Workspace::new(gpt_image("TETHER_BOOT"));
    disk_image::format_fat(&workspace.image, BOOT_OFFSET, BOOT_SECTORS, "bootfs").expect("mformat");
    let before = workspace.bytes();
    let (key, network, ntp, disks) = (
        workspace.key(),
        workspace.file("netplan.yaml", STATIC_NETPLAN),
        workspace.file("timesyncd.conf", NTP),
        workspace.file("disks.yaml", DISKS),
    );
    let tether = Tether::new();
    let image = workspace.image_arg();
    let run = tether
        .run_with_stdin(
            &[
                "os",
                "edit",
                "--image-file",
                &image,
                "--provisioning-key",
                &key,
                "--endpoint",
                "https://10.0.0.5:8443",
                "--network",
                &network,
                "--ntp",
                &ntp,
                "--disk-mapping",
                &disks,
                "--password-stdin",
            ],
            "console pw\n",
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("partition #1 (GPT name \"TETHER_BOOT\")"),
        "{}",
        run.stdout
    );
    assert_only_changed(&before, &workspace.bytes(), BOOT_OFFSET, BOOT_LEN);

    let read = |path: &str| {
        disk_image::fat_read(&workspace.image, BOOT_OFFSET, path).expect("mcopy reads it back")
    };
    let bundle: BootBundle =
        serde_json::from_slice(&read("tether/bundle.json")).expect("the bundle parses");
    assert_eq!(bundle.version, 1);
    assert_eq!(
        bundle.server, "https://10.0.0.5:8443",
        "--endpoint wins over the key's"
    );
    assert_eq!(bundle.ca_sha256, "ab".repeat(32));
    assert_eq!(
        bundle.credential,
        BootCredential::Provisioning {
            key_id: "key-1".into(),
            secret: "s3cret-of-the-key".into()
        }
    );
    assert_eq!(read("tether/netplan.yaml"), STATIC_NETPLAN.as_bytes());
    assert_eq!(read("tether/timesyncd.conf"), NTP.as_bytes());
    assert_eq!(read("tether/disk-mapping.yaml"), DISKS.as_bytes());

    // The hash is crypt(3)'s: openssl computes the same from its salt.
    let hash = bundle.console_password_hash.expect("a password hash");
    let salt = hash.split('$').nth(3).expect("a salt field");
    let openssl = std::process::Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, "console pw"])
        .output()
        .expect("openssl runs");
    let expected = String::from_utf8_lossy(&openssl.stdout);
    assert_eq!(
        hash.replace("rounds=5000$", ""),
        expected.trim(),
        "openssl passwd -6 gives the same hash"
    );

    // Again, without --network: the files are replaced, the default
    // netplan written.
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &image,
            "--provisioning-key",
            &key,
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let netplan = read("tether/netplan.yaml");
    assert!(String::from_utf8_lossy(&netplan).contains("name: en*"));
    let bundle: BootBundle =
        serde_json::from_slice(&read("tether/bundle.json")).expect("the bundle parses");
    assert_eq!(
        bundle.server, "https://tether.example:8443",
        "the key's server"
    );
    assert_eq!(bundle.console_password_hash, None);
    assert_only_changed(&before, &workspace.bytes(), BOOT_OFFSET, BOOT_LEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn os_edit_finds_a_raspberry_pi_s_bootfs_in_an_mbr() {
    let workspace = Workspace::new(disk_image::mbr(
        SECTORS,
        &[
            (0x0C, BOOT_FIRST as u32, BOOT_SECTORS as u32),
            (0x83, 20480, 10240),
        ],
    ));
    disk_image::format_fat(&workspace.image, BOOT_OFFSET, BOOT_SECTORS, "bootfs").expect("mformat");
    let before = workspace.bytes();
    let key = workspace.key();
    let run = Tether::new()
        .run(&[
            "os",
            "edit",
            "--image-file",
            &workspace.image_arg(),
            "--provisioning-key",
            &key,
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("Raspberry Pi"), "{}", run.stdout);
    assert_only_changed(&before, &workspace.bytes(), BOOT_OFFSET, BOOT_LEN);
    let bundle = disk_image::fat_read(&workspace.image, BOOT_OFFSET, "tether/bundle.json")
        .expect("mcopy reads it back");
    assert!(String::from_utf8_lossy(&bundle).contains("key-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn os_edit_writes_an_ext4_edgelq_boot_partition_with_debugfs() {
    let workspace = Workspace::new(gpt_image("EDGELQ_BOOT"));
    disk_image::format_ext4(&workspace.image, BOOT_OFFSET, BOOT_LEN, "EDGELQ_BOOT")
        .expect("mke2fs");
    let before = workspace.bytes();
    let (key, ntp) = (workspace.key(), workspace.file("timesyncd.conf", NTP));
    let run = Tether::new()
        .run(&[
            "os",
            "edit",
            "--image-file",
            &workspace.image_arg(),
            "--provisioning-key",
            &key,
            "--ntp",
            &ntp,
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_only_changed(&before, &workspace.bytes(), BOOT_OFFSET, BOOT_LEN);

    let debugfs = |request: &str| {
        disk_image::debugfs(&workspace.image, BOOT_OFFSET, request).expect("debugfs reads it")
    };
    let bundle: BootBundle =
        serde_json::from_slice(&debugfs("cat /tether/bundle.json")).expect("the bundle parses");
    assert_eq!(bundle.server, "https://tether.example:8443");
    assert!(matches!(
        bundle.credential,
        BootCredential::Provisioning { .. }
    ));
    assert_eq!(debugfs("cat /tether/timesyncd.conf"), NTP.as_bytes());
    let netplan = debugfs("cat /tether/netplan.yaml");
    assert!(String::from_utf8_lossy(&netplan).contains("name: eth*"));
    let stat = String::from_utf8_lossy(&debugfs("stat /tether/bundle.json")).into_owned();
    assert!(
        stat.contains("Mode:  0600"),
        "the bundle holds a secret: {stat}"
    );
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
}

#[tokio::test(flavor = "multi_thread")]
async fn os_edit_refuses_bad_input_and_leaves_the_image_untouched() {
    let workspace = Workspace::new(gpt_image("EDGELQ_BOOT"));
    disk_image::format_fat(&workspace.image, BOOT_OFFSET, BOOT_SECTORS, "EDGELQ").expect("mformat");
    let before = workspace.bytes();
    let tether = Tether::new();
    let image = workspace.image_arg();
    let key = workspace.key();
    let edit = |extra: &[&str]| {
        let mut args = vec!["os", "edit", "--image-file", &image];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run_args = |args: Vec<String>| {
        let tether = &tether;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tether.run(&args).await
        }
    };

    let bad_netplan = workspace.file(
        "bad-netplan.yaml",
        &STATIC_NETPLAN.replace("192.168.1.30/24", "192.168.1.300/24"),
    );
    let run = run_args(edit(&[
        "--provisioning-key",
        &key,
        "--network",
        &bad_netplan,
    ]))
    .await;
    assert_failed_untouched(
        &run,
        &before,
        &workspace,
        &[
            "invalid --network file",
            "network.ethernets.enp2s0.addresses[0]",
        ],
    );

    let bad_disks = workspace.file(
        "bad-disks.yaml",
        "diskmappings:\n  - {disk: /dev/sdb1, mountpoint: /a, size: -1}\n  - {disk: /dev/sdb2, mountpoint: /b, size: -1}\n",
    );
    let run = run_args(edit(&[
        "--provisioning-key",
        &key,
        "--disk-mapping",
        &bad_disks,
    ]))
    .await;
    assert_failed_untouched(
        &run,
        &before,
        &workspace,
        &[
            "invalid --disk-mapping file",
            "diskmappings[1].size",
            "tailmost",
        ],
    );

    let not_a_key = workspace.file("sa.json", r#"{"kind": "service-account", "key": "x"}"#);
    let run = run_args(edit(&["--provisioning-key", &not_a_key])).await;
    assert_failed_untouched(
        &run,
        &before,
        &workspace,
        &["kind: must be \"tether-provisioning-key\""],
    );

    let run = run_args(edit(&[
        "--provisioning-key",
        &key,
        "--boot-partition",
        "firmware",
    ]))
    .await;
    assert_failed_untouched(
        &run,
        &before,
        &workspace,
        &[
            "no boot partition",
            "#1 at byte 1048576",
            "GPT name \"EDGELQ_BOOT\"",
            "#2 at byte 10485760",
        ],
    );

    // No partition with a boot label at all.
    let unlabelled = Workspace::new(gpt_image("rootfs"));
    let unlabelled_before = unlabelled.bytes();
    let unlabelled_image = unlabelled.image_arg();
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &unlabelled_image,
            "--provisioning-key",
            &key,
        ])
        .await;
    assert_failed_untouched(
        &run,
        &unlabelled_before,
        &unlabelled,
        &[
            "no boot partition",
            "EDGELQ_BOOT or TETHER_BOOT",
            "GPT name \"rootfs\"",
            "--boot-partition",
        ],
    );

    // A boot partition whose filesystem tether does not write.
    let blank = Workspace::new(gpt_image("EDGELQ_BOOT"));
    let blank_before = blank.bytes();
    let blank_image = blank.image_arg();
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &blank_image,
            "--provisioning-key",
            &key,
        ])
        .await;
    assert_failed_untouched(
        &run,
        &blank_before,
        &blank,
        &["no filesystem tether recognises", "FAT and ext2/3/4 only"],
    );

    // Not a disk image at all.
    let text = Workspace::new(b"just some text\n".repeat(100));
    let text_before = text.bytes();
    let text_image = text.image_arg();
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &text_image,
            "--provisioning-key",
            &key,
        ])
        .await;
    assert_failed_untouched(&run, &text_before, &text, &["it is not a disk image"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn os_edit_device_name_writes_a_one_time_enrollment_token() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    tether.run_ok(&["devices", "add", "edge-1"]).await;

    let workspace = Workspace::new(gpt_image("EDGELQ_BOOT"));
    disk_image::format_fat(&workspace.image, BOOT_OFFSET, BOOT_SECTORS, "EDGELQ").expect("mformat");
    let before = workspace.bytes();
    let image = workspace.image_arg();
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &image,
            "--device-name",
            "edge-1",
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("enrollment token expires"),
        "{}",
        run.stdout
    );
    assert_only_changed(&before, &workspace.bytes(), BOOT_OFFSET, BOOT_LEN);

    let bundle: BootBundle = serde_json::from_slice(
        &disk_image::fat_read(&workspace.image, BOOT_OFFSET, "tether/bundle.json")
            .expect("mcopy reads it back"),
    )
    .expect("the bundle parses");
    assert_eq!(bundle.server, tetherd.api_url);
    use sha2::Digest as _;
    assert_eq!(
        bundle.ca_sha256,
        hex::encode(sha2::Sha256::digest(ca_der(&tetherd)))
    );
    let BootCredential::Enrollment { device, token } = bundle.credential else {
        panic!("an enrollment credential: {:?}", bundle.credential);
    };
    assert_eq!(device, "edge-1");
    assert!(!token.is_empty());

    // An image written now and booted next month gets a token that lasts.
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &image,
            "--device-name",
            "edge-1",
            "--token-ttl",
            "30days",
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let in_30_days = (chrono::Utc::now() + chrono::TimeDelta::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let in_30_days_late = (chrono::Utc::now() + chrono::TimeDelta::days(30)
        - chrono::TimeDelta::minutes(5))
    .format("%Y-%m-%d")
    .to_string();
    assert!(
        run.stdout
            .contains(&format!("enrollment token expires {in_30_days}"))
            || run
                .stdout
                .contains(&format!("enrollment token expires {in_30_days_late}")),
        "{}",
        run.stdout
    );
    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &image,
            "--device-name",
            "edge-1",
            "--token-ttl",
            "100days",
        ])
        .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("ttlSeconds must be"), "{}", run.stderr);

    let run = tether
        .run(&[
            "os",
            "edit",
            "--image-file",
            &image,
            "--device-name",
            "edge-9",
        ])
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("edge-9"), "{}", run.stderr);
}

/// The whole path of seed 004: a policy and its key made with the CLI, the
/// key written into an image by `tether os edit`, and an agent started
/// from the boot partition's files registers under the policy.
#[tokio::test]
async fn an_agent_booted_from_an_edited_image_registers_under_its_policy() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    tether
        .run_ok(&[
            "policies",
            "create",
            "lab",
            "--mode",
            "UNATTENDED",
            "--identity-field",
            "status.facts.hardwareSerial",
            "-l",
            "site=lab",
        ])
        .await;
    let workspace = Workspace::new(gpt_image("EDGELQ_BOOT"));
    let key = workspace.dir.path().join("lab.key.json");
    let key_arg = key.to_string_lossy().into_owned();
    tether
        .run_ok(&["policies", "keys", "create", "lab", "--key-file", &key_arg])
        .await;
    disk_image::format_fat(&workspace.image, BOOT_OFFSET, BOOT_SECTORS, "EDGELQ").expect("mformat");
    let image = workspace.image_arg();
    tether
        .run_ok(&[
            "os",
            "edit",
            "--image-file",
            &image,
            "--provisioning-key",
            &key_arg,
        ])
        .await;

    // The device boots: its boot partition's files, its hardware's serial.
    let boot = workspace.dir.path().join("boot");
    std::fs::create_dir_all(boot.join("tether")).expect("a boot dir");
    let bundle = disk_image::fat_read(&workspace.image, BOOT_OFFSET, "tether/bundle.json")
        .expect("mcopy reads it back");
    std::fs::write(boot.join("tether/bundle.json"), bundle).expect("writes the bundle");
    let facts = workspace.file("facts.json", r#"{"hardwareSerial": "PI-0042"}"#);
    let boot_arg = boot.to_string_lossy().into_owned();
    let mut agent = tether_testkit::Agent::unenrolled(
        "booted",
        &[
            ("TETHER_BOOT_BUNDLE", boot_arg.as_str()),
            ("TETHER_AGENT_FACTS_FILE", facts.as_str()),
        ],
    )
    .expect("an agent");
    agent.start().expect("starts");
    let device = agent.wait_device().await.expect("registers");
    assert!(device.starts_with("lab-"), "{device}");
    let shown = tether
        .run_ok(&["devices", "get", &device, "-o", "json"])
        .await;
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!(shown["labels"]["site"], "lab", "{shown}");
    assert_eq!(shown["policy"], "lab", "{shown}");
    let listed = tether.run_ok(&["policies", "list"]).await;
    assert!(
        listed.contains("lab") && listed.contains("UNATTENDED"),
        "{listed}"
    );
    agent.stop().await.expect("stops");
}
