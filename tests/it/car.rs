//! CAR files as Storacha's tools make them: for objects of 0 B, 1 B,
//! 256 KiB, 1 MiB + 1 and 20 MiB, pitr's CAR bytes and root CID equal those
//! of the `ipfs-car` npm package (`ipfs-car pack --no-wrap --output`), which
//! `.ci/setup` installs.

use std::process::Command;

#[test]
fn car_files_and_root_cids_equal_ipfs_car() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, size) in [
        ("empty", 0usize),
        ("one", 1),
        ("quarter", 256 << 10),
        ("mib-plus-one", (1 << 20) + 1),
        ("twenty", 20 << 20),
    ] {
        let data = crate::support::data(size as u64 + 3, size, 0);
        let input = dir.path().join(format!("{name}.bin"));
        std::fs::write(&input, &data).expect("write input");
        let car_path = dir.path().join(format!("{name}.car"));
        let out = Command::new("ipfs-car")
            .arg("pack")
            .arg(&input)
            .args(["--no-wrap", "--output"])
            .arg(&car_path)
            .output()
            .expect("run ipfs-car (npm install -g ipfs-car@3.1.0; .ci/setup does)");
        assert!(out.status.success(), "ipfs-car on {name}: {out:?}");
        let their_root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let theirs = std::fs::read(&car_path).expect("read their CAR");

        let (root, ours) = pitr::ship::storacha::car::pack(&data).expect("pack");
        assert_eq!(root.to_string(), their_root, "{name}: root CID");
        assert_eq!(ours.len(), theirs.len(), "{name}: CAR length");
        assert!(ours == theirs, "{name}: CAR bytes differ");
    }
}
