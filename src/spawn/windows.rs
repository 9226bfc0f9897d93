//! Process "groups" on Windows: a Job Object per host with
//! `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`. Every process the host starts joins
//! its job; `TerminateJobObject` ends them all, and when the daemon dies,
//! however it dies, the kernel closes its handles and with them the job,
//! killing the tree: no orphans, without a reaper.
//!
//! The host is started with `CREATE_NEW_PROCESS_GROUP`, so a graceful stop
//! is `CTRL_BREAK_EVENT` to that group (Node reports it as `SIGBREAK`).
//!
//! Compiled (`cargo check --target x86_64-pc-windows-gnu`), never run: see
//! `SECURITY.md`. Known window: the child is assigned to its job just after
//! `CreateProcess` returns, so a process it spawns in its first
//! microseconds would escape (Node needs tens of milliseconds to get there).

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JobObjectBasicAccountingInformation, JobObjectExtendedLimitInformation,
    QueryInformationJobObject, SetInformationJobObject, TerminateJobObject,
};

pub use windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP;

use super::StopSignal;

/// A host's Job Object (kill-on-close) and the pid of its first process.
#[derive(Debug)]
pub struct ProcessGroup {
    job: OwnedHandle,
    pid: u32,
}

fn check(ok: i32) -> io::Result<()> {
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ProcessGroup {
    /// Put the freshly created process `child` (pid `pid`) into a new
    /// kill-on-close job.
    pub(super) fn contain(child: RawHandle, pid: u32) -> io::Result<ProcessGroup> {
        // SAFETY: CreateJobObjectW with null attributes and name creates an
        // anonymous job and returns an owned handle, or null on failure.
        let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid handle we own and nothing else closes.
        let job = unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) };
        // SAFETY: the struct is plain data; all-zero is a valid value.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: the pointer and size describe `limits`, which outlives the call.
        check(unsafe {
            SetInformationJobObject(
                job.as_raw_handle() as HANDLE,
                JobObjectExtendedLimitInformation,
                (&raw const limits).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        })?;
        // SAFETY: both handles are valid for the duration of the call; the
        // child's handle is owned by its `Child`, which the caller holds.
        check(unsafe { AssignProcessToJobObject(job.as_raw_handle() as HANDLE, child as HANDLE) })?;
        Ok(ProcessGroup { job, pid })
    }

    /// The host's pid (Windows has no group id to record).
    pub fn id(&self) -> i32 {
        self.pid as i32
    }

    /// `Term`: CTRL_BREAK to the host's console process group. `Kill`:
    /// terminate every process in the job.
    pub fn signal(&self, sig: StopSignal) {
        let result = match sig {
            StopSignal::Term => check(
                // SAFETY: plain integers; the group id is the host's pid
                // because it was created with CREATE_NEW_PROCESS_GROUP.
                unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.pid) },
            ),
            StopSignal::Kill => check(
                // SAFETY: the job handle is valid while `self` lives.
                unsafe { TerminateJobObject(self.job.as_raw_handle() as HANDLE, 1) },
            ),
        };
        if let Err(e) = result {
            tracing::warn!(pid = self.pid, signal = ?sig, error = %e, "signalling the host's job failed");
        }
    }

    /// The job's live processes. They are not listed here: a job that is
    /// alive is reported by its first process's pid.
    pub fn members(&self) -> Vec<u32> {
        if self.alive() {
            vec![self.pid]
        } else {
            Vec::new()
        }
    }

    /// What [`UsageProbe::read`] needs: a second handle to the job.
    pub fn usage_probe(&self) -> io::Result<UsageProbe> {
        Ok(UsageProbe {
            job: self.job.try_clone()?,
        })
    }

    /// Whether any process of the job is still running. If the job cannot
    /// be asked, assume the worst: a stop keeps waiting until its deadline.
    pub fn alive(&self) -> bool {
        accounting(&self.job).map_or(true, |i| i.ActiveProcesses > 0)
    }
}

/// Reads what a job uses; `Send`, for a blocking thread.
#[derive(Debug)]
pub struct UsageProbe {
    job: OwnedHandle,
}

impl UsageProbe {
    /// What the job's processes use: their count and CPU time (the job
    /// does not report current memory).
    pub fn read(self) -> io::Result<crate::protocol::GroupUsage> {
        let info = accounting(&self.job)?;
        // 100 ns units.
        let cpu = (info.TotalUserTime + info.TotalKernelTime).max(0) as u64 / 10_000;
        Ok(crate::protocol::GroupUsage {
            processes: info.ActiveProcesses,
            rss_bytes: None,
            cpu_ms: Some(cpu),
        })
    }
}

/// A job's accounting: active processes, CPU times.
fn accounting(job: &OwnedHandle) -> io::Result<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION> {
    // SAFETY: plain data; all-zero is valid.
    let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `info`; the length pointer may be null.
    check(unsafe {
        QueryInformationJobObject(
            job.as_raw_handle() as HANDLE,
            JobObjectBasicAccountingInformation,
            (&raw mut info).cast(),
            std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
            std::ptr::null_mut(),
        )
    })?;
    Ok(info)
}
