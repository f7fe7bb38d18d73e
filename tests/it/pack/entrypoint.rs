//! The image's entrypoint on a fresh lease, run for real. No container
//! engine starts containers on these machines, so the image is approximated
//! by what it is made of: a root filesystem of the runtime stage's packages
//! (`.ci/runtime-rootfs`, mmdebstrap, cached), with this build's `pitr`, the
//! entrypoint and the Dockerfile's own user-creating `RUN` line, entered with
//! `unshare --mount --pid --fork` + `chroot` as a runtime would. The state
//! volume is an empty directory owned by root, as Akash mounts it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A root filesystem of the image, unpacked under `dir`.
struct Image {
    rootfs: PathBuf,
}

impl Image {
    fn unpack(dir: &Path) -> Image {
        let out = Command::new("bash")
            .arg(root().join(".ci/runtime-rootfs"))
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "the runtime root filesystem (bash .ci/runtime-rootfs; .ci/setup builds it): {}",
            said(&out)
        );
        let tarball = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let rootfs = dir.join("rootfs");
        std::fs::create_dir(&rootfs).expect("mkdir rootfs");
        let out = Command::new("tar")
            .args(["-x", "--numeric-owner", "-f", &tarball, "-C"])
            .arg(&rootfs)
            .output()
            .expect("tar");
        assert!(out.status.success(), "untar {tarball}: {}", said(&out));
        let bin = rootfs.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        for (from, to) in [
            (PathBuf::from(env!("CARGO_BIN_EXE_pitr")), "pitr"),
            (
                root().join("deploy/image/pitr-entrypoint"),
                "pitr-entrypoint",
            ),
        ] {
            std::fs::copy(&from, bin.join(to)).expect("copy into the rootfs");
            std::fs::set_permissions(bin.join(to), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let image = Image { rootfs };
        // The Dockerfile's own RUN line that makes the user and its home.
        let df = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
        let run: String = df
            .lines()
            .skip_while(|l| !l.starts_with("RUN groupadd"))
            .take_while(|l| !l.starts_with("ENV ") && !l.starts_with('#'))
            .map(|l| l.trim_end_matches('\\'))
            .collect::<Vec<_>>()
            .join(" ");
        let run = run
            .strip_prefix("RUN ")
            .expect("the Dockerfile's RUN groupadd line");
        let out = image.chroot(&["bash", "-c", run], None);
        assert!(out.status.success(), "{run}: {}", said(&out));
        image
    }

    /// Runs `argv` as root inside the image, in its own mount and PID
    /// namespaces, with `volume` (when given) mounted at /var/lib/pitr.
    fn chroot(&self, argv: &[&str], volume: Option<&Path>) -> Output {
        let r = self.rootfs.display();
        let mut script = format!(
            "set -e; mount --rbind /dev '{r}/dev'; mount -t proc proc '{r}/proc'; \
             mount -t tmpfs tmpfs '{r}/tmp';"
        );
        if let Some(v) = volume {
            script.push_str(&format!(
                " mount --bind '{}' '{r}/var/lib/pitr';",
                v.display()
            ));
        }
        script.push_str(&format!(" exec chroot '{r}' \"$@\""));
        Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--propagation", "private"])
            .args(["sh", "-c", &script, "sh"])
            .args(argv)
            // What a container starts with: the image's ENV, a root HOME.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .output()
            .expect("unshare")
    }
}

/// An empty directory owned by root, mode 0755: a fresh Akash volume.
fn fresh_volume(dir: &Path) -> PathBuf {
    let v = dir.join("volume");
    std::fs::create_dir_all(&v).expect("mkdir volume");
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&v, Some(0), Some(0)).expect("chown root");
    v
}

/// A config with a filesystem destination inside the image (owned by the
/// pitr user, as a mounted destination would be) and nothing to stream.
fn write_config(image: &Image) -> String {
    let identity = age::x25519::Identity::generate();
    let store = image.rootfs.join("srv/store");
    std::fs::create_dir_all(&store).expect("mkdir store");
    std::os::unix::fs::chown(&store, Some(10001), Some(10001)).expect("chown store");
    std::fs::create_dir_all(image.rootfs.join("etc/pitr")).expect("mkdir etc/pitr");
    std::fs::write(
        image.rootfs.join("etc/pitr/pitr.toml"),
        format!(
            "[repository]\nrecipients = [\"{}\"]\nstate_dir = \"/var/lib/pitr\"\n\n\
             [[destination]]\nname = \"local\"\nkind = \"fs\"\npath = \"/srv/store\"\n",
            identity.to_public()
        ),
    )
    .expect("write config");
    "/etc/pitr/pitr.toml".to_owned()
}

/// Requires root (unshare, chroot, mounts): CI and the development
/// machines run the suite as root; PostgreSQL runs unprivileged beside it.
#[test]
fn entrypoint_gives_a_root_owned_volume_to_10001_and_runs_pitr_as_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = Image::unpack(dir.path());
    let config = write_config(&image);

    // Without the entrypoint, pitr as 10001 cannot use the fresh volume:
    // what the image's former `USER pitr` did on a new Akash lease.
    let volume = fresh_volume(dir.path());
    let out = image.chroot(
        &[
            "setpriv",
            "--reuid=10001",
            "--regid=10001",
            "--clear-groups",
            "pitr",
            "init",
            "-c",
            &config,
        ],
        Some(&volume),
    );
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).to_lowercase().contains("permission denied"),
        "{}",
        said(&out)
    );
    std::fs::remove_dir_all(&volume).expect("rm volume");

    // Through the entrypoint, started as root as Akash starts it.
    let volume = fresh_volume(dir.path());
    let out = image.chroot(&["pitr-entrypoint", "init", "-c", &config], Some(&volume));
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("Created repository"), "{}", said(&out));
    let meta = std::fs::metadata(&volume).expect("volume");
    assert_eq!((meta.uid(), meta.gid()), (10001, 10001));
    assert_eq!(meta.mode() & 0o777, 0o700);
    // What pitr wrote there, it wrote as 10001.
    let mut written = 0;
    for entry in walk(&volume) {
        let m = std::fs::symlink_metadata(&entry).expect("metadata");
        assert_eq!((m.uid(), m.gid()), (10001, 10001), "{}", entry.display());
        written += 1;
    }
    assert!(written > 0, "pitr init wrote nothing into the state volume");

    // The process the entrypoint runs: 10001:10001, no other group, no
    // capability, no way back up.
    let out = image.chroot(
        &[
            "pitr-entrypoint",
            "sh",
            "-c",
            "echo ids=$(id -u):$(id -g):$(id -G); grep -E '^(CapEff|CapPrm|NoNewPrivs):' /proc/self/status; echo home=$HOME",
        ],
        Some(&volume),
    );
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ids=10001:10001:10001\n"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("CapPrm:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("home=/var/lib/pitr"), "{text}");

    // A second start (the volume is pitr's now) and a file a root
    // `docker exec` left behind: given back to 10001, and init agrees the
    // repository exists.
    std::fs::write(volume.join("left-by-root"), "x").expect("write");
    let out = image.chroot(
        &["pitr-entrypoint", "pitr", "init", "-c", &config],
        Some(&volume),
    );
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("already initialised"), "{}", said(&out));
    let m = std::fs::metadata(volume.join("left-by-root")).expect("metadata");
    assert_eq!((m.uid(), m.gid()), (10001, 10001));

    // Started as another user on a volume it cannot write (no fsGroup):
    // a clear error that says both ways out, and pitr is not started.
    let volume2 = fresh_volume(&dir.path().join("second"));
    let out = image.chroot(
        &[
            "setpriv",
            "--reuid=10001",
            "--regid=10001",
            "--clear-groups",
            "pitr-entrypoint",
            "init",
            "-c",
            &config,
        ],
        Some(&volume2),
    );
    let text = said(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("not writable by uid 10001") && text.contains("fsGroup"),
        "{text}"
    );

    // A first word that is a pitr subcommand runs pitr: no subcommand is
    // also a program on the image's PATH.
    let help = Command::new(env!("CARGO_BIN_EXE_pitr"))
        .arg("--help")
        .output()
        .expect("pitr --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        subcommands.contains(&"run") && subcommands.contains(&"init"),
        "{help}"
    );
    // The entrypoint's own test: `type -P` (programs only, not builtins).
    let mut argv = vec![
        "bash",
        "-c",
        "for c; do type -P \"$c\" && echo \"COLLIDES: $c\"; done; true",
        "bash",
    ];
    argv.extend(subcommands.iter().copied());
    let out = image.chroot(&argv, None);
    assert!(out.status.success(), "{}", said(&out));
    assert!(!said(&out).contains("COLLIDES"), "{}", said(&out));
    // `export` (a shell builtin too) is pitr's, as the workflows call it.
    let out = image.chroot(&["pitr-entrypoint", "export", "--help"], Some(&volume));
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("Usage: pitr export"), "{}", said(&out));
}

/// Every path under `dir`, not following links.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if std::fs::symlink_metadata(&path).expect("metadata").is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}
