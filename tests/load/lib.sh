# Shell helpers shared by the load scripts in tests/load/ (sourced, not run).

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
