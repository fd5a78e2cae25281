//! `cargo xtask vm-test`: the probe's privileged tests on the kernels
//! production nodes run, each booted under qemu.
//!
//! For every kernel and architecture asked for: fetch Debian's kernel
//! package and a handful of tools into a cached root ([`guest`]), build the
//! test binaries for the architecture ([`binaries`]), pack both into an
//! initramfs, boot it, and read each test binary's exit code off the
//! serial console ([`qemu`]). The guest tells the outcome tests which
//! pre-SYN hook `auto` must choose on its kernel, so a kernel where the
//! connect exits stop loading fails the run instead of passing quietly.

mod binaries;
mod guest;
mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd::{require_root, run};

/// How many times a guest is booted when it dies before its init runs.
const BOOT_ATTEMPTS: u32 = 3;

/// A guest architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The C compiler and linker for a cross build (Debian's cross gcc).
    fn gcc(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu-gcc",
            Arch::Aarch64 => "aarch64-linux-gnu-gcc",
        }
    }

    fn strip(self) -> &'static str {
        if self == Arch::host() {
            return "strip";
        }
        match self {
            Arch::X86_64 => "x86_64-linux-gnu-strip",
            Arch::Aarch64 => "aarch64-linux-gnu-strip",
        }
    }

    /// Debian packages this architecture's guest needs on the host:
    /// (package, why).
    fn packages(self) -> Vec<(&'static str, &'static str)> {
        let mut packages = vec![
            (
                "mmdebstrap",
                "fetches the guest's kernel and tools from Debian",
            ),
            ("cpio", "packs the guest's initramfs"),
            ("kmod", "depmod: indexes the guest kernel's modules"),
        ];
        match self {
            Arch::X86_64 => packages.push(("qemu-system-x86", "boots x86_64 guests")),
            Arch::Aarch64 => packages.push(("qemu-system-arm", "boots aarch64 guests")),
        }
        if self != Arch::host() {
            packages.extend([
                ("gcc-aarch64-linux-gnu", "links the aarch64 test binaries"),
                (
                    "libc6-dev-arm64-cross",
                    "the aarch64 C library to link with",
                ),
                ("binutils-aarch64-linux-gnu", "strips the aarch64 binaries"),
            ]);
        }
        packages
    }
}

/// A kernel family of the matrix and what the probe must do on it.
pub struct Kernel {
    /// `6.1` or `6.12`: what `--kernel` takes.
    pub family: &'static str,
    /// Debian's meta-package, `{arch}` standing for Debian's architecture:
    /// it always names the newest build of the family.
    meta_package: &'static str,
    /// What `--sync-failure-hook auto` must choose there, on x86_64 and on
    /// aarch64 (where fexit on kernel functions needs ftrace direct calls,
    /// which arm64 has from Linux 6.4).
    auto_hook_x86_64: &'static str,
    auto_hook_aarch64: &'static str,
    /// Whether a connect's error report reaches the socket before its
    /// close (kernels before 6.10), the order EARLY_ERRORS is for.
    pub errors_before_close: bool,
}

impl Kernel {
    pub fn package(&self, arch: Arch) -> String {
        self.meta_package.replace("{arch}", arch.debian())
    }

    pub fn auto_hook(&self, arch: Arch) -> &'static str {
        match arch {
            Arch::X86_64 => self.auto_hook_x86_64,
            Arch::Aarch64 => self.auto_hook_aarch64,
        }
    }
}

/// The kernels of the matrix: Debian 12's own (6.1, as on Amazon Linux
/// 2023 and Bottlerocket) and its newer 6.12.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        family: "6.1",
        meta_package: "linux-image-cloud-{arch}",
        auto_hook_x86_64: "connect_exits",
        auto_hook_aarch64: "off",
        errors_before_close: true,
    },
    Kernel {
        family: "6.12",
        meta_package: "linux-image-6.12-cloud-{arch}",
        auto_hook_x86_64: "connect_exits",
        auto_hook_aarch64: "connect_exits",
        errors_before_close: false,
    },
];

#[derive(clap::Args)]
pub struct VmTestArgs {
    /// Which kernel family to boot: 6.1, 6.12, or all.
    #[arg(long, default_value = "all", value_name = "6.1|6.12|all")]
    kernel: String,
    /// The guest's architecture. aarch64 is emulated and cross-compiled.
    #[arg(long, value_enum, default_value = "x86_64")]
    arch: Arch,
    /// Run only these test binaries (e.g. `--only probe_outcomes`);
    /// default: every privileged probe test.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The `observer` binary the CLI test runs in the guest (default: the
    /// one cargo builds with the tests), e.g. the static binary from
    /// `cargo xtask dist`.
    #[arg(long, value_name = "PATH")]
    observer_bin: Option<PathBuf>,
    /// Fetch the kernels and tools from Debian again instead of using the
    /// cache in target/vm/.
    #[arg(long)]
    refresh: bool,
    /// Use KVM instead of software emulation (same architecture only).
    #[arg(long)]
    kvm: bool,
    /// Stop a guest that has not finished after this many minutes.
    #[arg(long, default_value_t = 30)]
    timeout_minutes: u64,
    /// Show the guest's whole console, not only results and failures.
    #[arg(long)]
    verbose: bool,
}

impl VmTestArgs {
    /// The matrix as the test suite runs it: every kernel, for `arch`,
    /// these test binaries (all when empty), this observer binary.
    pub fn suite(arch: Arch, only: &[&str], observer_bin: Option<PathBuf>) -> VmTestArgs {
        VmTestArgs {
            kernel: "all".into(),
            arch,
            only: only.iter().map(|name| name.to_string()).collect(),
            observer_bin,
            refresh: false,
            kvm: false,
            timeout_minutes: 30,
            verbose: false,
        }
    }
}

pub fn vm_test(args: VmTestArgs) -> anyhow::Result<()> {
    require_root("the guest's root is unpacked with its owners and device files; vm-test")?;
    let kernels: Vec<&Kernel> = match args.kernel.as_str() {
        "all" => KERNELS.iter().collect(),
        family => match KERNELS.iter().find(|k| k.family == family) {
            Some(kernel) => vec![kernel],
            None => bail!(
                "no kernel {family:?} in the matrix; choose one of {} or all",
                KERNELS
                    .iter()
                    .map(|k| k.family)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    if args.kvm && args.arch != Arch::host() {
        bail!("--kvm runs guests of this host's architecture only");
    }
    let only: Vec<&str> = args.only.iter().map(String::as_str).collect();
    for name in &only {
        if !binaries::PROBE_TESTS.iter().any(|(_, t)| t.name == *name) {
            bail!(
                "no probe test {name:?}; choose from {}",
                binaries::PROBE_TESTS
                    .iter()
                    .map(|(_, t)| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let workspace = crate::dist::workspace_root()?;
    install_host_tools(&workspace, args.arch)?;

    let built = binaries::build(
        &workspace,
        args.arch,
        (!only.is_empty()).then_some(only.as_slice()),
    )?;
    let observer = args.observer_bin.clone().unwrap_or(built.observer.clone());
    let vm_dir = workspace.join("target").join("vm");
    let mut table = Vec::new();
    let mut failed = false;
    for kernel in kernels {
        let started = Instant::now();
        let tarball = guest::root_tarball(&vm_dir.join("cache"), args.arch, kernel, args.refresh)?;
        let work = vm_dir.join(format!("{}-{}", args.arch.name(), kernel.family));
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let guest = guest::assemble(&work, &tarball, args.arch, kernel, &built, &observer)?;
        println!(
            "vm-test: booting Linux {} ({}) with {} test binaries",
            guest.release,
            args.arch.name(),
            built.tests.len()
        );
        let console_log = work.join("console.log");
        let options = qemu::BootOptions {
            kvm: args.kvm,
            timeout: Duration::from_secs(args.timeout_minutes * 60),
            console_log: &console_log,
            verbose: args.verbose,
        };
        let mut outcome = qemu::boot(args.arch, &guest, &options)?;
        let mut boots = 1;
        // A guest that dies before its init reports the kernel never ran a
        // line of the project's code: under TCG the emulated CPU, not the
        // probe, is what failed. Boot it again, a bounded number of times,
        // and say so; a panic once the tests run is never retried.
        while outcome.died_booting() && boots < BOOT_ATTEMPTS {
            println!(
                "vm-test: Linux {} died before its init ran (boot {boots} of {BOOT_ATTEMPTS}); \
                 its console:\n{}\nvm-test: booting it again",
                guest.release,
                qemu::console_tail(&console_log, 40)
            );
            outcome = qemu::boot(args.arch, &guest, &options)?;
            boots += 1;
        }
        let (row, ok) = judge(
            kernel,
            args.arch,
            &guest,
            &built,
            &outcome,
            started.elapsed(),
        );
        if !ok {
            failed = true;
            println!(
                "vm-test: the console's last lines:\n{}\nvm-test: console log kept in {}",
                qemu::console_tail(&console_log, 40),
                console_log.display()
            );
        }
        table.push(row);
    }
    println!("\n{}", table.join("\n"));
    if failed {
        bail!("the probe tests failed on at least one kernel (see above)");
    }
    Ok(())
}

/// One summary line per guest, and whether every test binary passed.
fn judge(
    kernel: &Kernel,
    arch: Arch,
    guest: &guest::Guest,
    built: &binaries::Built,
    outcome: &qemu::Outcome,
    took: Duration,
) -> (String, bool) {
    let mut problems = Vec::new();
    if outcome.kernel_release.as_deref() != Some(guest.release.as_str()) {
        problems.push(format!(
            "the guest reported kernel {:?}, not {}",
            outcome.kernel_release, guest.release
        ));
    }
    for (program, _) in &built.tests {
        match outcome
            .results
            .iter()
            .find(|(name, _)| name == program.name)
        {
            Some((_, Some(0))) => {}
            Some((_, code)) => problems.push(format!("{} exited with {code:?}", program.name)),
            None => problems.push(format!("{} never finished", program.name)),
        }
    }
    if !outcome.finished {
        problems.push("the guest did not reach the end of its list".into());
    }
    let order = if kernel.errors_before_close {
        "error report before close"
    } else {
        "error report after close"
    };
    let status = if problems.is_empty() {
        format!("{} passed", built.tests.len())
    } else {
        format!("FAILED: {}", problems.join("; "))
    };
    let row = format!(
        "{:<28} auto hook {:<14} {:<26} {:>5.0} s  {status}",
        guest.release,
        kernel.auto_hook(arch),
        order,
        took.as_secs_f64()
    );
    (row, problems.is_empty())
}

/// Debian packages and the Rust target the architecture needs, only what
/// is missing.
fn install_host_tools(workspace: &Path, arch: Arch) -> anyhow::Result<()> {
    let packages = arch.packages();
    let missing: Vec<&str> = packages
        .iter()
        .map(|(package, _)| *package)
        .filter(|package| !crate::setup::dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        println!("vm-test: Debian packages present");
    } else {
        for (package, why) in packages.iter().filter(|(p, _)| missing.contains(p)) {
            println!("vm-test: installing {package} ({why})");
        }
        crate::setup::apt_install(&missing)?;
    }
    if arch == Arch::host() {
        return Ok(());
    }
    let target = arch.rust_target();
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace)
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == target)
    {
        return Ok(());
    }
    println!("vm-test: adding Rust target {target} (the guest's test binaries)");
    run(Command::new("rustup")
        .args(["target", "add", target])
        .current_dir(workspace))
}
