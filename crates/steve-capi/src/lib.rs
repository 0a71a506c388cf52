//! libjobserver's C interface on steve's client library: `libjobserver.so`, `libjobserver.a`
//! and `include/jobserver.h`, so that a C or C++ build tool written for libjobserver links
//! against steve unchanged.
//!
//! Every function here is a thin `extern "C"` shell: it checks its pointers, calls the safe
//! code in [`state`] (jobs and the one wait), [`mod@env`] (MAKEFLAGS) or steve-core's client
//! (joining and creating), keeps the caller's `struct jobserver` up to date, and turns errors
//! into `-1` and `errno` as [`errors`] maps them. Callbacks of jobs that ended run last, once
//! the library is done with its state, so a callback may call the library again.
//!
//! Why a crate of its own rather than a feature of steve-core: Cargo builds a library's
//! crate types whatever its features, so a cdylib and a staticlib in steve-core would be built
//! (and their C symbols exported) everywhere steve-core is used, the `steve` binary included;
//! the C library's file must be named `libjobserver`, not `libsteve_core`; and this crate can
//! use only steve-core's public client, which keeps that client the one implementation.
//!
//! The man pages (`man/`, installed by `scripts/install`) are the reference for callers.

pub mod children;
pub mod env;
pub mod errors;
pub mod state;

use std::ffi::CStr;

use libc::{c_char, c_int, c_void, pid_t, size_t, FILE};
use nix::errno::Errno;
use steve_core::client::{Client, Jobserver, Style, PIPE_BUF};
use steve_core::makeflags::{Jobs, JobserverAuth};

use crate::children::JobFunction;
use crate::env::Flags;
use crate::errors::errno_of;
use crate::state::{CloseRefused, DoneFunction, State};

/// `struct jobserver` of `jobserver.h`, field for field.
#[repr(C)]
#[derive(Debug)]
pub struct CJobserver {
    /// make's `n`: run nothing.
    pub dry_run: bool,
    /// make's `d`.
    pub debug: bool,
    /// make's `k`.
    pub keep_going: bool,
    /// After ECHILD, the child that ended and was not a job; else -1.
    pub stopped: pid_t,
    /// Its status, as waitpid(2) gives it.
    pub status: c_int,
    /// Tokens this process created the jobserver with; 0 when joined.
    pub size: size_t,
    /// Whether the implicit token is free.
    pub has_free_token: bool,
    /// Jobs launched and not yet collected.
    pub current_jobs: size_t,
    /// The open jobserver; NULL once closed.
    pub state: *mut State,
}

fn fail(errno: Errno) -> c_int {
    errno.set();
    -1
}

fn answer(result: Result<c_int, Errno>) -> c_int {
    result.unwrap_or_else(fail)
}

impl CJobserver {
    fn set_flags(&mut self, flags: Flags) {
        self.dry_run = flags.dry_run;
        self.debug = flags.debug;
        self.keep_going = flags.keep_going;
    }

    fn flags(&self) -> Flags {
        Flags { dry_run: self.dry_run, debug: self.debug, keep_going: self.keep_going }
    }

    fn install(&mut self, state: State, size: usize) {
        self.stopped = -1;
        self.status = 0;
        self.size = size;
        self.has_free_token = true;
        self.current_jobs = 0;
        self.state = Box::into_raw(Box::new(state));
    }

    fn sync(&mut self, state: &State) {
        self.current_jobs = state.current_jobs();
        self.has_free_token = state.has_free_token();
        match state.stopped {
            Some((pid, status)) => (self.stopped, self.status) = (pid, status),
            None => self.stopped = -1,
        }
    }
}

/// Runs `operation` on the open jobserver `js`, then brings `js`'s fields up to date and calls
/// the callbacks of the jobs that ended; errno is set last, so no callback clobbers it.
///
/// # Safety
/// `js` is NULL or points to a `struct jobserver` that is open or was closed.
unsafe fn with_open(
    js: *mut CJobserver,
    operation: impl FnOnce(&mut State) -> Result<c_int, Errno>,
) -> c_int {
    // SAFETY: the caller's pointer, valid or NULL as documented.
    let Some(js) = (unsafe { js.as_mut() }) else { return fail(Errno::EINVAL) };
    // SAFETY: `state` is NULL or was made by Box::into_raw in `install`, and is used by one
    // call at a time (the library is not thread-safe per jobserver, as libjobserver).
    let Some(state) = (unsafe { js.state.as_mut() }) else { return fail(Errno::EBADF) };
    let result = operation(state);
    js.sync(state);
    let ended = state.take_ended();
    for job in ended {
        // SAFETY: the callback and data the caller gave jobserver_launch_job.
        unsafe { job.notify() };
    }
    answer(result)
}

/// Joins the jobserver the environment names (MAKEFLAGS).
///
/// # Safety
/// `js` is NULL or points to a `struct jobserver` the caller owns and has not opened.
#[no_mangle]
pub unsafe extern "C" fn jobserver_connect(js: *mut CJobserver) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_mut() }) else { return fail(Errno::EINVAL) };
    js.state = std::ptr::null_mut();
    let mut connect = || -> Result<c_int, Errno> {
        let found = env::read()?;
        js.set_flags(found.as_ref().map(|found| Flags::of(&found.flags)).unwrap_or_default());
        let auth = found.and_then(|found| found.flags.jobserver().cloned());
        let auth = auth.ok_or(Errno::ENODEV)?;
        let client = Client::open(&auth).map_err(|error| errno_of(&error))?;
        js.install(State::new(client, None, auth)?, 0);
        Ok(0)
    };
    answer(connect())
}

fn create(js: &mut CJobserver, tokens: &[u8]) -> Result<c_int, Errno> {
    // More than PIPE_BUF tokens: TooManyTokens, EINVAL.
    let jobserver = Jobserver::with_tokens(tokens, Style::Pipe).map_err(|e| errno_of(&e))?;
    let flags = env::read().ok().flatten().map(|found| Flags::of(&found.flags));
    js.set_flags(flags.unwrap_or_default());
    jobserver.inherit_across_exec().map_err(|e| errno_of(&e))?;
    let client = jobserver.client().map_err(|e| errno_of(&e))?;
    let auth = jobserver.auth();
    let jobs = jobserver.jobs();
    let state = State::new(client, Some(jobserver), auth.clone())?;
    env::publish(js.flags(), Some((Some(Jobs::Limit(jobs as u32)), &auth)))
        .map_err(|_| Errno::ENOMEM)?;
    js.install(state, tokens.len());
    Ok(jobs as c_int)
}

/// Creates a jobserver holding the NUL-terminated word `tokens` and publishes it.
///
/// # Safety
/// `js` as for [`jobserver_connect`]; `tokens` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn jobserver_create(js: *mut CJobserver, tokens: *const c_char) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_mut() }) else { return fail(Errno::EINVAL) };
    js.state = std::ptr::null_mut();
    if tokens.is_null() {
        return fail(Errno::EINVAL);
    }
    // SAFETY: a NUL-terminated string, as documented.
    let tokens = unsafe { CStr::from_ptr(tokens) };
    answer(create(js, tokens.to_bytes()))
}

/// Creates a jobserver holding `size` copies of `token` and publishes it.
///
/// # Safety
/// `js` as for [`jobserver_connect`].
#[no_mangle]
pub unsafe extern "C" fn jobserver_create_n(
    js: *mut CJobserver,
    size: size_t,
    token: c_char,
) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_mut() }) else { return fail(Errno::EINVAL) };
    js.state = std::ptr::null_mut();
    // Refused before a buffer of `size` bytes is made.
    if size > PIPE_BUF {
        return fail(Errno::EINVAL);
    }
    answer(create(js, &vec![token as u8; size]))
}

/// Closes the jobserver once no job remains; the environment is left as it is.
///
/// # Safety
/// `js` is NULL or points to a `struct jobserver` that is open or was closed.
#[no_mangle]
pub unsafe extern "C" fn jobserver_close(js: *mut CJobserver) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_mut() }) else { return fail(Errno::EINVAL) };
    if js.state.is_null() {
        return fail(Errno::EBADF);
    }
    // SAFETY: made by Box::into_raw in `install`, not yet freed (the pointer is not NULL).
    let verdict = unsafe { &*js.state }.check_close();
    match verdict {
        Err(CloseRefused::Busy) => fail(Errno::EBUSY),
        Err(CloseRefused::Uncountable) => fail(Errno::EAGAIN),
        Ok(all_back) => {
            // SAFETY: as above; the pointer is cleared at once, so it is freed once.
            drop(unsafe { Box::from_raw(js.state) });
            js.state = std::ptr::null_mut();
            js.current_jobs = 0;
            js.has_free_token = true;
            if all_back {
                0
            } else {
                fail(Errno::EIDRM)
            }
        }
    }
}

/// Starts `func(data)` in a new process once a token is free, waiting at most `wait`
/// milliseconds (poll(2)'s convention); `done(data, status)` is called when it has ended.
///
/// # Safety
/// `js` as for [`jobserver_close`]; `func` and `done` are callable with `data` (in the new
/// process for `func`).
#[no_mangle]
pub unsafe extern "C" fn jobserver_launch_job(
    js: *mut CJobserver,
    wait: c_int,
    shared: bool,
    data: *mut c_void,
    func: Option<JobFunction>,
    done: Option<DoneFunction>,
) -> c_int {
    let Some(func) = func else { return fail(Errno::EINVAL) };
    // SAFETY: passed on as documented above.
    unsafe { with_open(js, |state| state.launch(wait, shared, data, func, done).map(|()| 0)) }
}

/// Ends job `pid`, which the caller reaped itself, with `status`.
///
/// # Safety
/// `js` as for [`jobserver_close`].
#[no_mangle]
pub unsafe extern "C" fn jobserver_terminate_job(
    js: *mut CJobserver,
    pid: pid_t,
    status: c_int,
) -> c_int {
    // SAFETY: as documented above.
    unsafe { with_open(js, |state| state.terminate(pid, status).map(|()| 0)) }
}

/// Waits at most `timeout` milliseconds for a job to end; returns the jobs left.
///
/// # Safety
/// `js` as for [`jobserver_close`].
#[no_mangle]
pub unsafe extern "C" fn jobserver_wait(js: *mut CJobserver, timeout: c_int) -> c_int {
    // SAFETY: as documented above.
    unsafe { with_open(js, |state| state.wait_for_jobs(timeout).map(count)) }
}

/// Waits for every job, as long as each wait of `timeout` sees one end; returns the jobs left.
///
/// # Safety
/// `js` as for [`jobserver_close`].
#[no_mangle]
pub unsafe extern "C" fn jobserver_collect(js: *mut CJobserver, timeout: c_int) -> c_int {
    // SAFETY: as documented above.
    unsafe { with_open(js, |state| state.collect(timeout).map(count)) }
}

/// Kills every job and collects it.
///
/// # Safety
/// `js` as for [`jobserver_close`].
#[no_mangle]
pub unsafe extern "C" fn jobserver_clear(js: *mut CJobserver) -> c_int {
    // SAFETY: as documented above.
    unsafe { with_open(js, |state| state.clear().map(|()| 0)) }
}

fn count(jobs: usize) -> c_int {
    c_int::try_from(jobs).unwrap_or(c_int::MAX)
}

/// Reads make's flags (n, d, k) from the environment into `js`.
///
/// # Safety
/// `js` is NULL or points to a `struct jobserver`.
#[no_mangle]
pub unsafe extern "C" fn jobserver_getenv(js: *mut CJobserver) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_mut() }) else { return fail(Errno::EINVAL) };
    let mut read = || -> Result<c_int, Errno> {
        let found = env::read()?;
        js.set_flags(found.map(|found| Flags::of(&found.flags)).unwrap_or_default());
        Ok(0)
    };
    answer(read())
}

/// Publishes the open jobserver `js` and its flags in MAKEFLAGS.
///
/// # Safety
/// `js` is NULL or points to a `struct jobserver` that is open or was closed.
#[no_mangle]
pub unsafe extern "C" fn jobserver_setenv(js: *const CJobserver) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_ref() }) else { return fail(Errno::EINVAL) };
    // SAFETY: NULL or made by `install` and not yet freed.
    let Some(state) = (unsafe { js.state.as_ref() }) else { return fail(Errno::EBADF) };
    let jobs = state.created_jobs().map(|jobs| Jobs::Limit(jobs as u32));
    answer(env::publish(js.flags(), Some((jobs, state.auth()))).map(|()| 0))
}

/// Takes the jobserver (and `-j`) out of MAKEFLAGS, writing `js`'s flags.
///
/// # Safety
/// `js` is NULL or points to a `struct jobserver`.
#[no_mangle]
pub unsafe extern "C" fn jobserver_unsetenv(js: *const CJobserver) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_ref() }) else { return fail(Errno::EINVAL) };
    answer(env::publish(js.flags(), None).map(|()| 0))
}

/// Writes a description of `js` to `stream`; returns the number of bytes written.
///
/// # Safety
/// `stream` is an open `FILE`; `js` is NULL or points to a `struct jobserver`; each separator
/// is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn jobserver_print(
    stream: *mut FILE,
    js: *const CJobserver,
    separator: *const c_char,
    job_separator: *const c_char,
    inter_job_separator: *const c_char,
) -> c_int {
    // SAFETY: as documented above.
    let Some(js) = (unsafe { js.as_ref() }) else { return fail(Errno::EINVAL) };
    if stream.is_null() {
        return fail(Errno::EINVAL);
    }
    let text_of = |pointer: *const c_char, default: &str| {
        if pointer.is_null() {
            default.to_string()
        } else {
            // SAFETY: a NUL-terminated string, as documented.
            unsafe { CStr::from_ptr(pointer) }.to_string_lossy().into_owned()
        }
    };
    let separator = text_of(separator, "\n");
    let job_separator = text_of(job_separator, ", ");
    let inter_job_separator = text_of(inter_job_separator, "\n");
    // SAFETY: NULL or made by `install` and not yet freed.
    let state = unsafe { js.state.as_ref() };
    let jobserver = match state.map(State::auth) {
        None => "closed".to_string(),
        Some(JobserverAuth::Fifo(path)) => format!("fifo:{}", path.display()),
        Some(JobserverAuth::Fds { read, write }) => format!("{read},{write}"),
        Some(JobserverAuth::Disabled) => "disabled".to_string(),
    };
    let fields = [
        format!("dry run: {}", u8::from(js.dry_run)),
        format!("debug: {}", u8::from(js.debug)),
        format!("keep-going: {}", u8::from(js.keep_going)),
        format!("stopped: {}", js.stopped),
        format!("jobserver: {jobserver}"),
        format!("size: {}", js.size),
        format!("has-free-token: {}", u8::from(js.has_free_token)),
        format!("jobs: {}", js.current_jobs),
    ];
    let mut text = fields.join(&separator);
    for job in state.map(|state| state.describe_jobs(&job_separator)).unwrap_or_default() {
        text.push_str(&inter_job_separator);
        text.push_str(&job);
    }
    // SAFETY: `text` is valid for its length; `stream` is an open FILE, as documented.
    let written = unsafe { libc::fwrite(text.as_ptr().cast(), 1, text.len(), stream) };
    if written < text.len() {
        return fail(Errno::last());
    }
    count(text.len())
}
