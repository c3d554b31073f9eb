//! crust-pause: the infra process of a pod sandbox.
//!
//! It holds the pod's namespaces open and does nothing else: it sleeps until a signal
//! comes. SIGINT and SIGTERM make it exit 0, as Kubernetes' pause does, so that a
//! graceful stop of the sandbox is quick and reports success. When it is PID 1 of a
//! PID namespace shared by the pod's containers, orphaned processes are reparented to
//! it, so it reaps them on SIGCHLD; otherwise they would stay zombies until the pod
//! ends.
//!
//! It is built by `runtime/build.rs` with plain `rustc` (no crates, statically linked)
//! so that it runs in a rootfs that holds nothing but this binary. `-v` prints the
//! version and exits.

use std::ffi::c_int;
use std::io::Write;

// The signal numbers and WNOHANG are those of Linux on every architecture crust runs on
// (x86_64, aarch64, riscv64, ppc64le, s390x); only MIPS, SPARC and Alpha differ.
#[cfg(not(target_os = "linux"))]
compile_error!("crust-pause is Linux-only");
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
compile_error!("crust-pause: signal numbers differ on this architecture");

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;
/// `SIG_ERR` is `(sighandler_t) -1`.
const SIG_ERR: usize = usize::MAX;

unsafe extern "C" {
    /// glibc's `signal` installs a persistent handler with `SA_RESTART` (BSD semantics),
    /// which is all we need; it spares us the per-architecture `struct sigaction`.
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn getpid() -> c_int;
    fn _exit(status: c_int) -> !;
    fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
}

/// SIGINT/SIGTERM: leave at once with status 0. Only async-signal-safe calls here.
extern "C" fn on_shutdown(_signal: c_int) {
    const MSG: &[u8] = b"crust-pause: shutting down\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a valid static buffer
    // of the given length. A failed write (stderr closed) is of no consequence.
    unsafe {
        write(2, MSG.as_ptr(), MSG.len());
        _exit(0);
    }
}

/// SIGCHLD: reap every child that has exited. Signals coalesce, so loop until none is
/// left rather than reaping one per signal.
extern "C" fn on_child(_signal: c_int) {
    let mut status: c_int = 0;
    // SAFETY: waitpid(2) is async-signal-safe; `status` is a valid, writable int that
    // lives across the call. WNOHANG keeps the handler from blocking.
    while unsafe { waitpid(-1, &raw mut status, WNOHANG) } > 0 {}
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v") {
        println!(
            "crust-pause {}",
            option_env!("CRUST_PAUSE_VERSION").unwrap_or("unknown")
        );
        return;
    }

    for (sig, handler) in [
        (SIGINT, on_shutdown as extern "C" fn(c_int)),
        (SIGTERM, on_shutdown),
        (SIGCHLD, on_child),
    ] {
        // SAFETY: the handlers are plain `extern "C" fn(c_int)` that only make
        // async-signal-safe calls; `signal` has no other preconditions.
        if unsafe { signal(sig, handler) } == SIG_ERR {
            let _ = writeln!(std::io::stderr(), "crust-pause: cannot handle signal {sig}");
            std::process::exit(1);
        }
    }

    // SAFETY: getpid(2) cannot fail and has no preconditions.
    if unsafe { getpid() } != 1 {
        // Not fatal (host PID namespace pods run it so): orphans then go elsewhere.
        let _ = writeln!(
            std::io::stderr(),
            "crust-pause: not PID 1, orphaned processes will not be reaped here"
        );
    }

    loop {
        // SAFETY: pause(2) has no preconditions; it returns after each handled signal
        // (SIGCHLD), and we simply wait again.
        unsafe { pause() };
    }
}
