//! A guest's root: Debian's kernel package and the few userspace programs
//! the probe tests call (iproute2, nftables, bash, kmod, busybox), packed
//! with the test binaries into one initramfs.
//!
//! mmdebstrap's `extract` variant unpacks the packages and their
//! dependencies without running any maintainer script, so a root for
//! another architecture needs no emulation to build. It is cached per
//! architecture and kernel under target/vm/, and fetched again only with
//! `--refresh`. The kernel image comes out of that root, so the kernel and
//! its modules always match.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{Arch, Kernel, binaries::Built};
use crate::cmd::run;

/// Debian's suites: the kernels' security updates land in bookworm-security.
const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

/// What the tests run besides themselves: `ip` and `nft` build their
/// namespaces and rules, bash makes the connectors' connects, sysctl
/// (procps) shortens SYN retries, kmod loads veth and nf_tables on demand,
/// busybox mounts and powers off.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "iproute2",
    "nftables",
    "kmod",
    "bash",
    "procps",
];

/// A guest ready to boot.
pub struct Guest {
    pub kernel_image: PathBuf,
    pub initramfs: PathBuf,
    /// The kernel's release, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
}

/// The cached root tarball for `arch` and `kernel`, fetched when missing
/// (or when `refresh`).
pub fn root_tarball(
    cache: &Path,
    arch: Arch,
    kernel: &Kernel,
    refresh: bool,
) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Named by what it holds, so a changed package list fetches anew.
    let tarball = cache.join(format!(
        "root-{}-{}-{:08x}.tar",
        arch.debian(),
        kernel.family,
        fingerprint(&PACKAGES.join(","))
    ));
    if tarball.exists() && !refresh {
        println!(
            "vm-test: {} root with Linux {} cached ({})",
            arch.name(),
            kernel.family,
            tarball.display()
        );
        return Ok(tarball);
    }
    let package = kernel.package(arch);
    println!(
        "vm-test: fetching Debian's {package} and the guest's tools for {} (mmdebstrap)",
        arch.name()
    );
    let partial = tarball.with_extension("tar.partial");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=extract", "--quiet"])
        .arg(format!("--architectures={}", arch.debian()))
        .arg(format!("--include={},{package}", PACKAGES.join(",")))
        .args(["--format=tar", "bookworm"])
        .arg(&partial)
        .args(MIRRORS);
    run(&mut cmd).context("fetching the guest's packages from Debian")?;
    fs::rename(&partial, &tarball)
        .with_context(|| format!("moving {} into place", partial.display()))?;
    Ok(tarball)
}

/// FNV-1a, folded to 32 bits: a stable name for a package list.
fn fingerprint(text: &str) -> u32 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash ^ (hash >> 32)) as u32
}

/// Unpacks the root into `work`, adds the test programs and /init, and
/// packs the initramfs.
pub fn assemble(
    work: &Path,
    tarball: &Path,
    arch: Arch,
    kernel: &Kernel,
    built: &Built,
    observer: &Path,
) -> anyhow::Result<Guest> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(&root))?;
    let release = kernel_release(&root)?;
    let kernel_image = work.join(format!("vmlinuz-{release}"));
    let boot_image = root.join("boot").join(format!("vmlinuz-{release}"));
    fs::copy(&boot_image, &kernel_image)
        .with_context(|| format!("copying {}", boot_image.display()))?;
    trim(&root, &release)?;
    // The package's postinst would run depmod; nothing ran in the root, so
    // the module index is built here, for the on-demand loading of veth and
    // the nf_tables modules.
    run(Command::new("depmod").arg("-b").arg(&root).arg(&release))
        .context("indexing the guest's kernel modules (depmod, from Debian's kmod)")?;

    let programs = root.join("vmtest");
    fs::create_dir_all(&programs).with_context(|| format!("creating {}", programs.display()))?;
    for (program, binary) in &built.tests {
        super::binaries::strip_into(arch, binary, &programs.join(program.name))?;
    }
    super::binaries::strip_into(arch, observer, &programs.join("observer"))?;
    let init = root.join("init");
    fs::write(&init, init_script(arch, kernel, built))
        .with_context(|| format!("writing {}", init.display()))?;
    set_executable(&init)?;

    let initramfs = work.join(format!("initramfs-{release}.cpio"));
    // newc is the format the kernel unpacks; uncompressed, because under
    // emulation decompressing costs more than reading the larger image.
    let pack = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        initramfs.display()
    );
    run(Command::new("sh").args(["-c", &pack])).context("packing the initramfs (cpio)")?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    Ok(Guest {
        kernel_image,
        initramfs,
        release,
    })
}

/// The one kernel release under lib/modules.
fn kernel_release(root: &Path) -> anyhow::Result<String> {
    let modules = root.join("lib").join("modules");
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!(
            "the guest root holds {n} kernels under {}; expected one",
            modules.display()
        ),
    }
}

/// Drops what the guest never reads: documentation, the kernel image
/// (booted from outside), and the module trees no test loads from.
fn trim(root: &Path, release: &str) -> anyhow::Result<()> {
    let modules = format!("lib/modules/{release}/kernel");
    let mut gone = vec![
        "boot".to_string(),
        "usr/share/doc".into(),
        "usr/share/man".into(),
        "usr/share/locale".into(),
        "usr/share/info".into(),
    ];
    for tree in [
        "sound",
        "drivers/gpu",
        "drivers/infiniband",
        "drivers/media",
        "fs",
    ] {
        gone.push(format!("{modules}/{tree}"));
    }
    for path in gone {
        let path = root.join(path);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The guest's PID 1: mounts what the probe needs (sysfs for BTF, bpffs,
/// cgroup v2, /run for `ip netns`), runs each test binary, prints one
/// result line per binary, and powers off.
///
/// bash rather than busybox sh: Debian's busybox runs its own applets
/// before PATH, and its `ip` is not iproute2's.
fn init_script(arch: Arch, kernel: &Kernel, built: &Built) -> String {
    let mut script = String::from(
        "#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /run /tmp /var
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mount -t tmpfs tmpfs /run
$bb mount -t tmpfs tmpfs /tmp
$bb mount -t bpf bpf /sys/fs/bpf
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
$bb mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$bb mkdir -p /run/netns
$bb rm -rf /var/run && $bb ln -s /run /var/run
ip link set lo up
echo \"OBSERVER-VM kernel $($bb uname -r) $($bb uname -m)\"
cd /vmtest
export RUST_BACKTRACE=1 OBSERVER_BIN=/vmtest/observer
",
    );
    script.push_str(&format!(
        "export OBSERVER_EXPECT_AUTO_HOOK={}\n",
        kernel.auto_hook(arch)
    ));
    for (program, _) in &built.tests {
        script.push_str(&format!(
            "echo \"OBSERVER-VM begin {name}\"\n./{name} {args}\necho \"OBSERVER-VM end {name} $?\"\n",
            name = program.name,
            args = program.args.join(" ")
        ));
    }
    script.push_str("echo \"OBSERVER-VM done\"\n$bb poweroff -f\n");
    script
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
