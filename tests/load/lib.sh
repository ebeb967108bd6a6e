# Shell helpers shared by the load scripts in tests/load/ (sourced, not run;
# the functions that report use the caller's log and die).

# A port below the kernel's ephemeral range (so no outgoing connection of
# this or another program holds it as its local end) that nothing listens on.
free_port() {
    local p low
    low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    ((low > 12000)) || low=32768
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Waits up to $3 s (default 15) for a line matching $2 in file $1; prints its last field.
wait_line() {
    local i tries=$((${3:-15} * 10))
    for i in $(seq 1 "$tries"); do
        if grep -q "$2" "$1" 2>/dev/null; then
            grep "$2" "$1" | head -n 1 | awk '{print $NF}'
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# The cargo target directory (CARGO_TARGET_DIR, else cargo's own answer, else target/).
target_dir() {
    local d=${CARGO_TARGET_DIR:-}
    [[ -n $d ]] || d=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "${d:-$ROOT/target}"
}

# Installs the missing tools named in $@ from Debian (nginx as nginx-light,
# else nginx), never letting the package start a system nginx on port 80.
# Uses the caller's log and die.
install_tools() {
    local need=("$@") made_policy=0 pkgs
    [[ "${SKIP_INSTALL:-0}" == 1 ]] && die "missing tools: ${need[*]} (SKIP_INSTALL=1)"
    [[ $(id -u) == 0 ]] || die "missing tools: ${need[*]}; run as root or install them"
    log "installing from Debian: ${need[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || true
    pkgs=("${need[@]/#nginx/nginx-light}")
    if ! timeout 600 apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; then
        pkgs=("${pkgs[@]/nginx-light/nginx}")
        timeout 600 apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
            { if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi; die "apt-get install ${pkgs[*]} failed"; }
    fi
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

# Makes sure the tools named in $@ are there (nginx also as /usr/sbin/nginx),
# installing the missing ones with install_tools.
require_tools() {
    local t need=()
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || { [[ $t == nginx && -x /usr/sbin/nginx ]]; } || need+=("$t")
    done
    if ((${#need[@]})); then install_tools "${need[@]}"; fi
}

# The EXIT trap: stops the processes in PIDS (TERM, up to 5 s, then KILL);
# after a failure shows the last lines of each file in $LOGS and of the
# files named in $@; removes $TMP; exits with the script's status.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p i alive f
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for i in $(seq 1 50); do
        alive=0
        for p in "${PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if ((rc != 0)); then
        log "logs of the failed run:"
        for f in "$LOGS"/* "$@"; do
            [[ -f $f ]] && { echo "--- $f (last 20 lines)" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}

# In the current directory: ca.pem/ca.key, a CA named $1, with the openssl
# key options in the rest of the arguments.
mint_ca() {
    local cn=$1
    shift
    openssl req -x509 "$@" -nodes -keyout ca.key -out ca.pem -days 2 \
        -subj "/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# In the current directory: $1.pem/$1.key, a server certificate for the DNS
# name $2 issued by ca.pem, with the openssl key options in the rest.
mint_server_cert() {
    local f=$1 name=$2
    shift 2
    openssl req "$@" -nodes -keyout "$f.key" -out "$f.csr" -subj "/CN=$name" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:$name" >"$f.ext"
    openssl x509 -req -in "$f.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 2 -extfile "$f.ext" -out "$f.pem" 2>/dev/null
}
