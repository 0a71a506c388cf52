//! Fuzz target: the control protocol, one JSON request per line on a socket any local user
//! may connect to (`steve status`, `steve get`, `steve set`, `steve trace`).
//!
//! A line must decode or be refused without a panic; a request that decodes must encode and
//! decode back to itself (the client and the server share these types). `set` is applied to
//! the settings the way the server applies it, all or nothing: a refused change leaves them as
//! they were, and after an accepted one each setting's value as `steve get` prints it must set
//! the same value again (so that `steve set KEY=$(steve get KEY)` changes nothing).

use steve_core::accounting::limits::{Limits, Settings, SETTINGS};
use steve_core::server::control::Request;
use steve_core::JobCount;

fn main() {
    afl::fuzz!(|data: &[u8]| run(data));
}

fn run(data: &[u8]) {
    let line = data.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let Ok(request) = serde_json::from_slice::<Request>(line) else { return };
    let text = serde_json::to_string(&request).expect("a request encodes");
    let back: Request = serde_json::from_str(&text).expect("an encoded request decodes");
    assert_eq!(back, request, "{text}");
    let settings = Settings { jobs: JobCount::new(4).expect("4 jobs"), limits: Limits::default() };
    match request {
        Request::Get { keys } => {
            for key in keys {
                let _ = settings.get(&key);
            }
        }
        Request::Set { settings: changes } => {
            let mut changed = settings.clone();
            if changed.apply(&changes).is_err() {
                assert_eq!(changed, settings, "a refused set changed something");
                return;
            }
            for key in SETTINGS {
                let value = changed.get(key).expect("every listed setting has a value");
                let mut again = changed.clone();
                again
                    .apply(&[(key.to_string(), value.clone())])
                    .unwrap_or_else(|error| panic!("{key}={value} (from get) is refused: {error}"));
                assert_eq!(again, changed, "{key}={value} (from get) changed the settings");
            }
        }
        Request::Status | Request::Trace { .. } | Request::Handover => {}
    }
}
