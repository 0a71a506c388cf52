//! steve's client errors as the error numbers libjobserver documents: the one place that says
//! which errno each cause gives (the man pages list the same).

use nix::errno::Errno;
use steve_core::client::ClientError;

/// The errno a C caller sees for `error`.
pub fn errno_of(error: &ClientError) -> Errno {
    match error {
        ClientError::NoJobserver => Errno::ENODEV,
        // Never given by Client::open; a dry run is reported in the `dry_run` field instead.
        ClientError::DryRun { .. } => Errno::ENODEV,
        // Descriptors the parent make closed (a rule without '+'), or disabled ones (-2,-2):
        // the jobserver was withheld from this process.
        ClientError::Disabled { .. } => Errno::EACCES,
        ClientError::Open { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Errno::EACCES
        }
        // Not a pipe, standard input or output, two different pipes, a regular file, a path
        // that is not there: the jobserver named cannot be used.
        ClientError::NotAJobserver { .. } | ClientError::Open { .. } => Errno::EBADF,
        ClientError::Makeflags(_) => Errno::EPROTO,
        // End of file on the token descriptor: nobody can ever write a token again.
        ClientError::Closed => Errno::EBADF,
        ClientError::TooManyTokens { .. } => Errno::EINVAL,
        ClientError::Io(error) => error.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        _ => Errno::EIO,
    }
}
