//! Readiness for a service manager: systemd's notification protocol (sd_notify(3)), spoken
//! directly. Under `Type=notify`, units ordered after steve start only once `READY=1` arrives,
//! which `steve serve` sends when clients may connect (the device or mount exists, the control
//! socket listens). Without `NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::warn;

/// Tells the service manager the server is ready, with a one-line status.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// Tells the service manager the server is stopping.
pub fn stopping() {
    send("STOPPING=1");
}

fn send(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(error) = try_send(&socket, message) {
        warn!("cannot notify the service manager at {}: {error}", socket.to_string_lossy());
    }
}

fn try_send(socket: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let bytes = socket.as_encoded_bytes();
    // A leading @ names a socket in the abstract namespace.
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sender = UnixDatagram::unbound()?;
    sender.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        try_send(path.as_os_str(), "READY=1").unwrap();
        let mut buffer = [0u8; 64];
        let length = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("steve-notify-test-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        try_send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let length = abstract_listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..length], b"STOPPING=1");
    }
}
