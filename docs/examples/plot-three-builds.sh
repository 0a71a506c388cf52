#!/bin/sh
# Makes the picture in the README: a make, a ninja and a cargo build at once on one steve fuse
# server of 4 tokens (ninja through the companion FIFO), then `steve plot` of the server's trace.
#
#   sudo docs/examples/plot-three-builds.sh OUT.svg
#
# Needs root (the fuse mount and its companion FIFO), GNU make 4.4 or later ($MAKE), ninja 1.13
# or later ($NINJA), cargo, and steve on $PATH (or $STEVE).
set -eu
out=$(realpath "${1:-three-builds.svg}")
steve=${STEVE:-steve}
make=${MAKE:-make}
ninja=${NINJA:-ninja}
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/mnt" "$work/make" "$work/ninja" "$work/cargo"

"$steve" serve --backend fuse --mountpoint "$work/mnt" -j4 --fifo "$work/jobserver.fifo" \
  --control "$work/control" > "$work/env" 2> "$work/serve.log" &
server=$!
while ! grep -q STEVE_FIFO_MAKEFLAGS "$work/env" 2>/dev/null; do sleep 0.1; done
makeflags=$(sed -n "s/^MAKEFLAGS='\(.*\)'$/\1/p" "$work/env")
fifo_makeflags=$(sed -n "s/^STEVE_FIFO_MAKEFLAGS='\(.*\)'$/\1/p" "$work/env")

# make: 16 jobs of 0.4 to 1 s.
{
  printf 'all:'; for n in $(seq 16); do printf ' j%s' "$n"; done; printf '\n'
  for n in $(seq 16); do printf 'j%s:\n\t@sleep 0.%s\n' "$n" $((n % 7 + 4)); done
} > "$work/make/Makefile"
# ninja: 16 edges of 0.6 s (no -j: with one, ninja leaves the jobserver alone).
{
  printf 'rule nap\n  command = sleep 0.6 && touch $out\n'
  for n in $(seq 16); do printf 'build o%s: nap\n' "$n"; done
} > "$work/ninja/build.ninja"
# cargo: 12 library crates, each compile held 0.5 s by a wrapper so that it shows.
members=""
for n in $(seq 12); do
  mkdir -p "$work/cargo/c$n/src"
  printf '[package]\nname = "c%s"\nversion = "0.1.0"\nedition = "2021"\n' "$n" > "$work/cargo/c$n/Cargo.toml"
  echo 'pub fn f() {}' > "$work/cargo/c$n/src/lib.rs"
  members="$members\"c$n\","
done
printf '[workspace]\nresolver = "2"\nmembers = [%s]\n' "$members" > "$work/cargo/Cargo.toml"
printf '#!/bin/sh\ncase "$*" in *--crate-name\\ c*) sleep 0.5;; esac\nexec "$@"\n' > "$work/wrapper"
chmod +x "$work/wrapper"

(cd "$work/cargo" && MAKEFLAGS="$makeflags" RUSTC_WRAPPER="$work/wrapper" \
  cargo build --offline -q -j 8) &
cargo=$!
sleep 0.3
(cd "$work/make" && MAKEFLAGS="$makeflags" "$make" -s) &
made=$!
(cd "$work/ninja" && MAKEFLAGS="$fifo_makeflags" "$ninja" > /dev/null) &
ninjad=$!
wait "$cargo" "$made" "$ninjad"
"$steve" plot --control "$work/control" --output "$out"
[ -z "${KEEP_TRACE:-}" ] || "$steve" trace --since all --json --control "$work/control" > "$KEEP_TRACE"
echo "wrote $out"
