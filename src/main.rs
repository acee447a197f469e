//! The `photosync` binary: arguments in, exit code out. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;

// A photo passes through several buffers on its way out (read, body, TLS records), and a
// rescan builds and drops a few hundred thousand small strings: glibc's malloc spent a tenth
// of a backfill's CPU on them, mimalloc a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Arenas are committed as they are used, so that a daemon on a shared server keeps its RSS to
/// what it holds: eagerly committed arenas (mimalloc's default) kept a cold backfill at twice
/// the RSS glibc needed. Set before the first allocation, which reserves the first arena: this
/// runs among the ELF constructors, before Rust's runtime starts (elsewhere the default holds).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[unsafe(link_section = ".init_array")]
#[used]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune() {
        use libmimalloc_sys::{mi_option_set, mi_option_t};
        // Its place in mimalloc.h's `mi_option_e`; the Rust bindings do not name it.
        const ARENA_EAGER_COMMIT: mi_option_t = 4;
        // SAFETY: a setter of a global option, called before any thread or allocation exists.
        unsafe {
            mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
    tune
};

fn main() -> ExitCode {
    use photosync::cli::{exit, Outcome};
    let cli = photosync::cli::Cli::parse();
    match photosync::cli::main(cli) {
        Outcome::Finished(code) => ExitCode::from(code),
        // Whatever still runs (an upload, a walk) ends with the process.
        Outcome::Interrupted => std::process::exit(i32::from(exit::INTERRUPTED)),
    }
}
