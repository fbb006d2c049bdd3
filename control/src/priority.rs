//! CPU priority: control's handshake work yields to the data plane.

/// Sets the calling thread's nice value (Linux: per thread; threads it
/// spawns later inherit it). Failure is logged, never fatal.
pub fn lower_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority(2) takes plain integers and has no memory-safety
    // preconditions; `who = 0` names the calling thread on Linux.
    let rc = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower control's priority");
    }
}
