//! How the server sizes and limits its pool from its cgroup: without `-j`, the CPUs its cgroup
//! may use, a memory limit relative to its `memory.max`, and pressure limits read from a
//! cgroup's pressure files (tested in the VM, whose kernel has the cgroup v2 controllers the host
//! lacks).

use std::ffi::OsString;
use std::time::Duration;

use steve_tests::steve;
use steve_tests::vm::{self, VmRun};

/// Boots the VM with `cpus` CPUs and runs `script` in `sh -u` once cgroup v2 is mounted with
/// `controllers` ("+cpu +memory") given to its children; the run must end with status 0.
/// Returns it, with its description for assertion messages.
fn in_the_vm_with_cgroups(controllers: &str, script: &str, cpus: u32) -> (VmRun, String) {
    let script = format!(
        "set -u\nmount -t cgroup2 cgroup2 /sys/fs/cgroup || exit 10\n\
         echo \"{controllers}\" > /sys/fs/cgroup/cgroup.subtree_control || exit 11\n{script}"
    );
    let command: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let run = vm::boot(&vm::Guest::Command(command), &[], Duration::from_secs(10 * 60), cpus);
    let what = run.describe();
    assert_eq!(run.status, Some(0), "{what}");
    (run, what)
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs QEMU and Debian's kernel (cgroup v2 with the cpu controller), which scripts/test installs"
)]
fn a_server_in_a_cgroup_with_cpu_max_of_two_cpus_serves_two_tokens_and_says_why() {
    // Four CPUs in the VM, a cgroup allowed two CPUs' worth of time and 512 MiB.
    let script = format!(
        r#"mkdir /sys/fs/cgroup/two && echo "200000 100000" > /sys/fs/cgroup/two/cpu.max || exit 12
echo 512M > /sys/fs/cgroup/two/memory.max || exit 14
echo $$ > /sys/fs/cgroup/two/cgroup.procs || exit 13
echo "online: $(nproc --all)"
dir=$(mktemp -d)
{steve} serve --backend fifo --path "$dir/jobserver" --min-memory-avail 50% > "$dir/out" 2> "$dir/log" &
server=$!
for i in $(seq 100); do [ -s "$dir/out" ] && break; sleep 0.1; done
echo "jobs: $({steve} get jobs --control "$dir/jobserver.control")"
echo "from: $({steve} get jobs-from --control "$dir/jobserver.control")"
echo "memory: $({steve} get memory-limit memory-from min-memory-avail --control "$dir/jobserver.control" | paste -sd ' ' -)"
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
    let (run, what) = in_the_vm_with_cgroups("+cpu +memory", &script, 4);
    let line = |prefix: &str| run.reported(prefix);
    assert_eq!(line("online: "), "4", "{what}");
    assert_eq!(line("jobs: "), "2", "{what}");
    assert_eq!(line("from: "), "cpu.max 200000 100000 of /sys/fs/cgroup/two", "{what}");
    // The memory limit is half of the cgroup's 512 MiB, not of the VM's 2 GiB.
    assert_eq!(line("memory: "), "512 memory.max 536870912 of /sys/fs/cgroup/two 50%", "{what}");
    assert!(line("makeflags: ").starts_with("MAKEFLAGS=' -j2 --jobserver-auth=fifo:"), "{what}");
    assert_eq!(
        line("log: "),
        "no -j: 2 tokens, for cpu.max 200000 100000 of /sys/fs/cgroup/two",
        "{what}"
    );
    assert_eq!(line("outside: "), "4", "the same machine outside the cgroup\n{what}");
}

#[test]
#[cfg_attr(
    not(steve_test_all),
    ignore = "needs QEMU, Debian's kernel (cgroup v2 with PSI) and GNU make 4.4.1, which scripts/test installs"
)]
fn a_memory_hog_in_a_cgroup_raises_its_pressure_and_the_server_holds_tokens_back_until_it_stops() {
    // A cgroup with a small memory.high: a process there that keeps touching more memory than
    // that is throttled into reclaim, and the cgroup's memory.pressure climbs. The server reads
    // that cgroup's pressure (a PSI trigger on it, and a reading every recheck).
    let script = format!(
        r#"mkdir /sys/fs/cgroup/hog && echo 32M > /sys/fs/cgroup/hog/memory.high || exit 12
dir=$(mktemp -d)
{steve} serve --backend fifo --path "$dir/jobserver" -j 4 --min-jobs 1 \
  --memory-pressure some:10/2 --pressure-source /sys/fs/cgroup/hog > "$dir/out" 2> "$dir/log" &
server=$!
for i in $(seq 100); do grep -q STEVE_CONTROL "$dir/out" && break; sleep 0.1; done
control="$dir/jobserver.control"
export MAKEFLAGS=" -j4 --jobserver-auth=fifo:$dir/jobserver"
# A make of 8 jobs of 0.5 s; prints its peak of jobs at once.
peak() {{
  rm -rf "$dir/m" && mkdir "$dir/m" && cd "$dir/m" || exit 20
  for n in 1 2 3 4 5 6 7 8; do
    printf 'j%s:\n\t@echo start j%s $$(date +%%s%%N) >> log; sleep 0.5; echo end j%s $$(date +%%s%%N) >> log\n' $n $n $n
  done > Makefile
  printf 'all: j1 j2 j3 j4 j5 j6 j7 j8\n' >> Makefile
  {make} -s all > /dev/null || exit 21
  sort -k3 -n log | awk '$1=="start"{{n++; if(n>p)p=n}} $1=="end"{{n--}} END{{print p}}'
  cd / 
}}
limited() {{ {steve} status --json --control "$control" | grep -c '"kind": "stall"'; }}
echo "before: $(peak) limited $(limited)"
# The hog: in the cgroup, touching 256 MiB over and over.
sh -c 'echo $$ > /sys/fs/cgroup/hog/cgroup.procs && exec python3 -c "
b = bytearray(256 << 20)
while True:
    for i in range(0, len(b), 4096):
        b[i] = (b[i] + 1) & 255
"' &
hog=$!
for i in $(seq 300); do [ "$(limited)" = 1 ] && break; sleep 0.1; done
echo "pressure: $(head -n 1 /sys/fs/cgroup/hog/memory.pressure)"
echo "during: $(peak) limited $(limited)"
kill $hog; wait $hog 2>/dev/null
for i in $(seq 600); do [ "$(limited)" = 0 ] && break; sleep 0.1; done
echo "after: $(peak) limited $(limited)"
kill $server; wait $server
grep -o 'holding tokens back: .*' "$dir/log" | head -n 1 | sed 's/^/log: /'
grep -c 'limits no longer exceeded' "$dir/log" | sed 's/^/released: /'
grep -c 'no PSI trigger' "$dir/log" | sed 's/^/untriggered: /'
"#,
        steve = steve::binary().display(),
        make = steve_tests::clients::make44().display(),
    );
    let (run, what) = in_the_vm_with_cgroups("+memory", &script, 2);
    let figures = |prefix: &str| -> (usize, String) {
        let line = run.reported(prefix);
        let (peak, limited) = line.split_once(" limited ").unwrap_or_else(|| panic!("{line}"));
        (peak.parse().unwrap_or_else(|_| panic!("{line}")), limited.to_string())
    };
    let (before, during, after) = (figures("before: "), figures("during: "), figures("after: "));
    eprintln!(
        "make's peak before the hog {}, during {}, after {}; {}; the hog's cgroup: {}",
        before.0,
        during.0,
        after.0,
        run.reported("log: "),
        run.reported("pressure: ")
    );
    assert_eq!(before, (5, "0".to_string()), "four tokens and make's own\n{what}");
    // Held back to min-jobs: one token out, and make's own.
    assert_eq!(during, (2, "1".to_string()), "{what}");
    assert_eq!(after, (5, "0".to_string()), "{what}");
    assert!(
        run.reported("log: ").starts_with("holding tokens back: memory pressure (some)"),
        "{what}"
    );
    assert_eq!(run.reported("released: "), "1", "{what}");
    assert_eq!(run.reported("untriggered: "), "0", "the trigger was armed\n{what}");
}
