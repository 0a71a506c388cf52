//! Takes tokens by hand, the way a build tool with its own event loop does: the implicit token
//! first, then `try_acquire` whenever the jobserver's descriptor polls readable, and each token
//! written back by dropping it. Prints how many jobs it could run at once.
//!
//! ```sh
//! steve run -j3 -- cargo run -p steve-core --example tokens     # 3 at once
//! ```

use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use steve_core::{Client, ClientError, Token};

fn main() -> Result<(), ClientError> {
    let client = Client::from_env()?;
    let implicit = client.take_implicit().expect("a fresh client has its implicit token");
    let mut tokens: Vec<Token> = Vec::new();
    // Take what is free now, and whatever becomes free within a short wait.
    loop {
        match client.try_acquire()? {
            Some(token) => tokens.push(token),
            None => {
                let mut ready = [PollFd::new(client.readiness(), PollFlags::POLLIN)];
                let wait = PollTimeout::try_from(Duration::from_millis(200)).expect("fits");
                // Readable may still mean nothing to take: another process can be faster.
                if poll(&mut ready, wait).map_err(|errno| ClientError::Io(errno.into()))? == 0 {
                    break;
                }
            }
        }
    }
    println!(
        "{} jobs at once: the implicit token and {} from the jobserver",
        tokens.len() + 1,
        tokens.len()
    );
    // Dropping the tokens writes back the bytes they read; the implicit one needs nothing.
    drop(tokens);
    drop(implicit);
    Ok(())
}
