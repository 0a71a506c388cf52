//! How the server sizes and shares its pool: without `-j`, the CPUs its cgroup may use (tested
//! in the VM, whose kernel has cgroup v2 controllers the host lacks).

use std::ffi::OsString;
use std::time::Duration;

use steve_tests::steve;

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs QEMU and Debian's kernel (cgroup v2 with the cpu controller), which scripts/test installs"
)]
fn a_server_in_a_cgroup_with_cpu_max_of_two_cpus_serves_two_tokens_and_says_why() {
    // Four CPUs in the VM, a cgroup allowed two CPUs' worth of time.
    let script = format!(
        r#"set -u
mount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 10
echo +cpu > /sys/fs/cgroup/cgroup.subtree_control || exit 11
mkdir /sys/fs/cgroup/two && echo "200000 100000" > /sys/fs/cgroup/two/cpu.max || exit 12
echo $$ > /sys/fs/cgroup/two/cgroup.procs || exit 13
echo "online: $(nproc --all)"
dir=$(mktemp -d)
{steve} serve --backend fifo --path "$dir/jobserver" > "$dir/out" 2> "$dir/log" &
server=$!
for i in $(seq 100); do [ -s "$dir/out" ] && break; sleep 0.1; done
echo "jobs: $({steve} get jobs --control "$dir/jobserver.control")"
echo "from: $({steve} get jobs-from --control "$dir/jobserver.control")"
echo "makeflags: $(head -n 1 "$dir/out")"
kill $server; wait $server
grep 'no -j' "$dir/log" | sed 's/^.*no -j/log: no -j/'
# Outside the cgroup, the same machine: all four.
echo $$ > /sys/fs/cgroup/cgroup.procs
{steve} serve --backend fifo --path "$dir/other" > "$dir/out2" 2> /dev/null &
server=$!
for i in $(seq 100); do [ -s "$dir/out2" ] && break; sleep 0.1; done
echo "outside: $({steve} get jobs --control "$dir/other.control")"
kill $server; wait $server
"#,
        steve = steve::binary().display(),
    );
    let command: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let run = steve_tests::vm::boot(
        &steve_tests::vm::Guest::Command(command),
        &[],
        Duration::from_secs(10 * 60),
        4,
    );
    let what = run.describe();
    assert_eq!(run.status, Some(0), "{what}");
    let line = |prefix: &str| run.reported(prefix);
    assert_eq!(line("online: "), "4", "{what}");
    assert_eq!(line("jobs: "), "2", "{what}");
    assert_eq!(line("from: "), "cpu.max 200000 100000 of /sys/fs/cgroup/two", "{what}");
    assert!(line("makeflags: ").starts_with("MAKEFLAGS=' -j2 --jobserver-auth=fifo:"), "{what}");
    assert_eq!(
        line("log: "),
        "no -j: 2 tokens, for cpu.max 200000 100000 of /sys/fs/cgroup/two",
        "{what}"
    );
    assert_eq!(line("outside: "), "4", "the same machine outside the cgroup\n{what}");
}
