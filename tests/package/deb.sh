#!/usr/bin/env bash
# tests/package/deb.sh: build the Debian package with cargo-deb, install it
# with dpkg on this machine, check what it installed, run it, remove it and
# purge it. Run by .ci/run as root; leaves the machine as it found it (the
# package purged, the fedpin user kept, as Debian packages do).
#
#   bash tests/package/deb.sh            build (release) + install + check + purge
#   FEDPIN_DEB=path.deb bash tests/package/deb.sh   use an already built package
#
# It refuses to run where fedpin is already installed or /etc/fedpin exists:
# purging at the end would destroy that installation's config and CA.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '[deb] %s\n' "$*"; }
fail() {
  printf '[deb] FAILED: %s\n' "$*" >&2
  exit 1
}
t0=$SECONDS

[[ $(id -u) == 0 ]] || fail "needs root (dpkg -i)"
command -v dpkg >/dev/null || fail "dpkg not found: this check needs a Debian-based machine"
if dpkg-query -W -f='${Status}' fedpin 2>/dev/null | grep -q 'installed'; then
  fail "the fedpin package is already installed here; refusing to test (and purge) over it"
fi
[[ ! -e /etc/fedpin ]] || fail "/etc/fedpin exists (a fedpin installation?); refusing to test (and purge) over it"

# Tools the checks use, from Debian's packages when missing.
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v man >/dev/null || missing+=(man-db)
command -v groff >/dev/null || missing+=(groff-base)
command -v adduser >/dev/null || missing+=(adduser)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  timeout 300 apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

installed=0
cleanup() {
  if [[ $installed == 1 ]]; then
    say "cleanup: purging the package"
    dpkg -P fedpin >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- build
deb=${FEDPIN_DEB:-}
if [[ -z $deb ]]; then
  if ! command -v cargo-deb >/dev/null; then
    say "installing cargo-deb (cargo install --locked; about 2 minutes)"
    timeout 1200 cargo install cargo-deb --version 3.8.0 --locked --quiet
  fi
  say "$(cargo deb --version)"
  b0=$SECONDS
  # A release build: the package CI installs is the one users install. The
  # shell completions are generated from it first (not committed; the
  # package's assets take them from target/completions/).
  bash debian/completions.sh >/tmp/fedpin-cargo-deb.log 2>&1 || {
    tail -n 40 /tmp/fedpin-cargo-deb.log >&2
    fail "debian/completions.sh"
  }
  deb=$(cargo deb --locked 2>/tmp/fedpin-cargo-deb.log | tail -n 1) || {
    tail -n 40 /tmp/fedpin-cargo-deb.log >&2
    fail "cargo deb"
  }
  say "built $deb in $((SECONDS - b0)) s"
fi
[[ -f $deb ]] || fail "no package at '$deb'"

say "package: $(dpkg-deb -f "$deb" Package Version Architecture Depends | tr '\n' ' ')"
say "contents:"
dpkg-deb -c "$deb" | awk '{print "  " $1, $NF}'
contents=$(dpkg-deb -c "$deb" | awk '{print $NF}')
for f in ./usr/bin/fedpin ./usr/bin/pinctl \
  ./etc/fedpin/fedpin.toml ./etc/fedpin/pins.toml \
  ./usr/lib/systemd/system/fedpin.service ./usr/lib/systemd/system/fedpin-ca.service \
  ./usr/lib/systemd/system/pinctl-verify.service ./usr/lib/systemd/system/pinctl-verify.timer \
  ./usr/share/man/man1/fedpin.1.gz ./usr/share/man/man1/fedpin-run.1.gz \
  ./usr/share/man/man1/fedpin-check-config.1.gz ./usr/share/man/man1/fedpin-ca-init.1.gz \
  ./usr/share/man/man1/fedpin-demo.1.gz ./usr/share/man/man1/pinctl.1.gz \
  ./usr/share/man/man1/pinctl-add.1.gz ./usr/share/man/man1/pinctl-verify.1.gz \
  ./usr/share/man/man5/fedpin.toml.5.gz ./usr/share/man/man5/fedpin-pins.5.gz \
  ./usr/share/bash-completion/completions/fedpin ./usr/share/bash-completion/completions/pinctl \
  ./usr/share/zsh/vendor-completions/_fedpin ./usr/share/zsh/vendor-completions/_pinctl \
  ./usr/share/fish/vendor_completions.d/fedpin.fish ./usr/share/fish/vendor_completions.d/pinctl.fish \
  ./usr/lib/fedpin/pinctl-verify-check.sh; do
  grep -qxF "$f" <<<"$contents" || fail "the package does not contain $f"
done
grep -q '/etc/fedpin/ca' <<<"$contents" && fail "the package must not ship anything under /etc/fedpin/ca (the CA is made on the host)"

# ---------------------------------------------------------------- install
say "dpkg -i"
dpkg -i "$deb" 2>&1 | tee /tmp/fedpin-dpkg-i.log
installed=1
if grep -E 'not found|error|warning' /tmp/fedpin-dpkg-i.log; then
  fail "dpkg -i printed the lines above"
fi

# The maintainer scripts as installed: valid sh, every cargo-deb token
# replaced, and the user made before any unit is enabled or started.
for script in postinst prerm postrm; do
  f=/var/lib/dpkg/info/fedpin.$script
  [[ -f $f ]] || fail "no $script installed"
  sh -n "$f" || fail "$script is not valid sh"
  ! grep -q 'DEBHELPER' "$f" || fail "$script still holds a #DEBHELPER# token"
done
user_line=$(grep -n 'adduser --system' /var/lib/dpkg/info/fedpin.postinst | head -n 1 | cut -d: -f1)
unit_line=$(grep -n 'deb-systemd-' /var/lib/dpkg/info/fedpin.postinst | head -n 1 | cut -d: -f1)
((user_line < unit_line)) || fail "postinst enables units (line $unit_line) before it creates the user (line $user_line)"

getent passwd fedpin >/dev/null || fail "no fedpin user after install"
[[ $(getent passwd fedpin | cut -d: -f7) == /usr/sbin/nologin ]] || fail "the fedpin user can log in: $(getent passwd fedpin)"
[[ $(stat -c '%U:%G %a' /etc/fedpin/fedpin.toml) == "root:fedpin 640" ]] ||
  fail "/etc/fedpin/fedpin.toml is $(stat -c '%U:%G %a' /etc/fedpin/fedpin.toml), want root:fedpin 640"
[[ $(stat -c '%U:%G %a' /etc/fedpin/pins.toml) == "root:root 644" ]] ||
  fail "/etc/fedpin/pins.toml is $(stat -c '%U:%G %a' /etc/fedpin/pins.toml), want root:root 644"
[[ $(stat -c '%U:%G %a' /etc/fedpin/ca) == "fedpin:fedpin 755" ]] ||
  fail "/etc/fedpin/ca is $(stat -c '%U:%G %a' /etc/fedpin/ca), want fedpin:fedpin 755"
conffiles=$(dpkg-query --showformat='${Conffiles}\n' --show fedpin)
for c in /etc/fedpin/fedpin.toml /etc/fedpin/pins.toml; do
  grep -q " $c " <<<"$conffiles" || fail "$c is not a conffile: $conffiles"
done
# Enabled even without a running systemd (deb-systemd-helper's symlinks).
[[ -L /etc/systemd/system/multi-user.target.wants/fedpin.service ]] || fail "fedpin.service is not enabled"
[[ -L /etc/systemd/system/timers.target.wants/pinctl-verify.timer ]] || fail "pinctl-verify.timer is not enabled"
say "installed: user fedpin, /etc/fedpin modes, conffiles, enabled units: ok"

# ---------------------------------------------------------------- units
units=(/usr/lib/systemd/system/{fedpin.service,fedpin-ca.service,pinctl-verify.service,pinctl-verify.timer})
out=$(systemd-analyze verify "${units[@]}" 2>&1) || fail "systemd-analyze verify: $out"
[[ -z $out ]] || fail "systemd-analyze verify printed (it exits 0 on unknown keys, so any line counts):
$out"
say "systemd-analyze verify ${units[*]##*/}: clean"

# ---------------------------------------------------------------- first start
# Before the first start there is no CA, and check-config says so.
set +e
pre=$(/usr/bin/fedpin check-config --config /etc/fedpin/fedpin.toml 2>&1)
rc=$?
set -e
[[ $rc == 64 && $pre == *outbound.ca_key* ]] || fail "check-config before the CA exists: exit $rc: $pre"

# What systemd does at the first start: fedpin-ca.service's conditions hold,
# and its ExecStart runs as its User with its UMask.
ca_unit=/usr/lib/systemd/system/fedpin-ca.service
mapfile -t conditions < <(grep '^Condition' "$ca_unit")
((${#conditions[@]} == 2)) || fail "fedpin-ca.service has ${#conditions[@]} Condition lines, want 2"
systemd-analyze condition "${conditions[@]}" >/dev/null 2>&1 || fail "fedpin-ca.service would not run on a host without a CA"
exec_start=$(sed -n 's/^ExecStart=//p' "$ca_unit")
user=$(sed -n 's/^User=//p' "$ca_unit")
umask_=$(sed -n 's/^UMask=//p' "$ca_unit")
[[ $exec_start == "/usr/bin/fedpin ca init --dir /etc/fedpin/ca" && $user == fedpin ]] ||
  fail "unexpected fedpin-ca.service: ExecStart=$exec_start User=$user"
runuser -u "$user" -- sh -c "umask $umask_ && exec $exec_start" >/dev/null
[[ $(stat -c '%U %a' /etc/fedpin/ca/fedpin-ca.key) == "fedpin 600" ]] ||
  fail "CA key is $(stat -c '%U %a' /etc/fedpin/ca/fedpin-ca.key), want fedpin 600"
[[ $(stat -c '%U %a' /etc/fedpin/ca/fedpin-ca.pem) == "fedpin 644" ]] ||
  fail "CA certificate is $(stat -c '%U %a' /etc/fedpin/ca/fedpin-ca.pem), want fedpin 644"
key_sum=$(sha256sum /etc/fedpin/ca/fedpin-ca.key | cut -d' ' -f1)

# Every later start: the unit is skipped, and even a forced run refuses to
# overwrite the CA.
if systemd-analyze condition "${conditions[@]}" >/dev/null 2>&1; then
  fail "fedpin-ca.service would run again with a CA present"
fi
if runuser -u "$user" -- sh -c "umask $umask_ && exec $exec_start" >/dev/null 2>&1; then
  fail "a second fedpin ca init succeeded over an existing CA"
fi
[[ $(sha256sum /etc/fedpin/ca/fedpin-ca.key | cut -d' ' -f1) == "$key_sum" ]] || fail "the CA key changed"
say "first start: CA made (key fedpin 0600, cert 0644); later starts skip it and never overwrite it"

say "fedpin check-config --config /etc/fedpin/fedpin.toml"
/usr/bin/fedpin check-config --config /etc/fedpin/fedpin.toml
# As the service user too (it must be able to read the config and the key).
runuser -u fedpin -- /usr/bin/fedpin check-config --config /etc/fedpin/fedpin.toml >/dev/null ||
  fail "check-config as the fedpin user"
/usr/bin/pinctl --pins /etc/fedpin/pins.toml check

# The daemon as the unit starts it, when its loopback ports are free here.
if ss -ltnH 2>/dev/null | awk '{print $4}' | grep -qE ':(8449|9448)$'; then
  say "SKIPPED running fedpin from the unit: 127.0.0.1:8449 or :9448 is in use on this machine"
else
  run=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/fedpin.service)
  log=$(mktemp)
  runuser -u fedpin -- $run >"$log" 2>&1 &
  pid=$!
  ok=0
  for _ in $(seq 1 100); do
    if curl -fsS http://127.0.0.1:9448/healthz >/dev/null 2>&1; then
      ok=1
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || true
  [[ $ok == 1 ]] || fail "fedpin ($run) did not answer /healthz: $(cat "$log")"
  rm -f "$log"
  say "fedpin run as the unit's user with the shipped config: /healthz ok"
fi

# ---------------------------------------------------------------- man pages
pages=(/usr/share/man/man1/fedpin*.1.gz /usr/share/man/man1/pinctl*.1.gz /usr/share/man/man5/fedpin*.5.gz)
for p in "${pages[@]}"; do
  err=$(MANWIDTH=80 man --warnings -l "$p" 2>&1 >/dev/null) || fail "man -l $p failed: $err"
  [[ -z $err ]] || fail "man -l $p warned: $err"
done
say "man -l: ${#pages[@]} pages render without warnings"

# ---------------------------------------------------------------- completions
bash -c 'source /usr/share/bash-completion/completions/fedpin && source /usr/share/bash-completion/completions/pinctl &&
  complete -p fedpin && complete -p pinctl' >/dev/null || fail "bash completions do not load"
say "bash completions load"
for bin in fedpin pinctl; do
  for pair in "bash:/usr/share/bash-completion/completions/$bin" "zsh:/usr/share/zsh/vendor-completions/_$bin" \
    "fish:/usr/share/fish/vendor_completions.d/$bin.fish"; do
    cmp -s "${pair#*:}" <("/usr/bin/$bin" completions "${pair%%:*}") ||
      fail "${pair#*:} is not what /usr/bin/$bin completions ${pair%%:*} prints"
  done
done
say "installed completions are what the installed binaries print"

# ---------------------------------------------------------------- demo
say "/usr/bin/fedpin demo"
demo=$(timeout 120 /usr/bin/fedpin demo) || fail "fedpin demo: $demo"
grep -q '^Result: OK' <<<"$demo" || fail "fedpin demo: $demo"
grep '^Result' <<<"$demo"

# ---------------------------------------------------------------- upgrade keeps conffiles
echo "# local edit" >>/etc/fedpin/fedpin.toml
dpkg -i "$deb" >/dev/null
grep -qx '# local edit' /etc/fedpin/fedpin.toml || fail "reinstalling replaced the edited fedpin.toml"
[[ $(sha256sum /etc/fedpin/ca/fedpin-ca.key | cut -d' ' -f1) == "$key_sum" ]] || fail "reinstalling changed the CA key"
say "reinstall over an edited config: edit kept, CA unchanged"

# ---------------------------------------------------------------- remove, purge
say "dpkg -r fedpin"
dpkg -r fedpin
[[ ! -e /usr/bin/fedpin && ! -e /usr/lib/systemd/system/fedpin.service ]] || fail "dpkg -r left the binary or the unit"
[[ -f /etc/fedpin/fedpin.toml && -f /etc/fedpin/pins.toml ]] || fail "dpkg -r removed the config or the pin file"
[[ $(sha256sum /etc/fedpin/ca/fedpin-ca.key | cut -d' ' -f1) == "$key_sum" ]] || fail "dpkg -r touched the CA key"
say "removed: /etc/fedpin and the CA key are still there"

say "dpkg -P fedpin"
dpkg -P fedpin
installed=0
[[ ! -e /etc/fedpin ]] || fail "dpkg -P left /etc/fedpin: $(ls -la /etc/fedpin)"
[[ ! -e /etc/systemd/system/multi-user.target.wants/fedpin.service ]] || fail "dpkg -P left the fedpin.service enablement"
if dpkg-query -W -f='${Status}' fedpin 2>/dev/null | grep -q 'installed'; then
  fail "fedpin still installed after purge"
fi
say "purged: /etc/fedpin is gone"
say "ok ($((SECONDS - t0)) s)"
