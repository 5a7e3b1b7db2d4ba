//! SIGINT and SIGTERM as a request to stop cleanly: vq-train's training loop finishes its step,
//! writes a checkpoint and returns `TrainError::Interrupted`; a second signal exits at once
//! (checkpoints are published atomically, so the last complete one survives).
//!
//! Only a binary installs the handlers ([`install`]); a library caller that does not keeps the
//! default behaviour, and [`pending`] is then always `None`.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The exit status of a process ended by `signal` (128 + its number: 130 for SIGINT, 143 for
/// SIGTERM).
pub fn exit_status(signal: i32) -> i32 {
    128 + signal
}

extern "C" fn on_signal(sig: libc::c_int) {
    if RECEIVED
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        const MSG: &[u8] = b"second signal: exiting now; the last complete checkpoint is kept\n";
        // SAFETY: `write` and `_exit` are async-signal-safe; a second signal means "stop now".
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(exit_status(sig));
        }
    }
}

/// Installs the handlers of SIGINT and SIGTERM (Unix; a no-op elsewhere).
pub fn install() {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with an async-signal-safe handler (an atomic store or
        // `_exit`); SA_RESTART keeps interrupted reads and writes going.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// The signal received since [`install`], if any.
pub fn pending() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
