# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pinctl_global_optspecs
    string join \n pins= h/help V/version
end

function __fish_pinctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pinctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pinctl_using_subcommand
    set -l cmd (__fish_pinctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pinctl -n "__fish_pinctl_needs_command" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_needs_command" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_needs_command" -s V -l version -d 'Print version'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "add" -d 'Enrol a peer: pin given keys, or connect and choose from the served chain'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "list" -d 'List the peers (a broken pin file: errors on stderr, exit 64)'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "remove" -d 'Remove a peer'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "verify" -d 'Connect to peers now and check they still match their pins'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "check" -d 'Lint the pin file: findings on stdout, exit 1 on errors'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "hash" -d 'Print the pins of PEM/DER certificates or public keys (`-` reads stdin)'
complete -c pinctl -n "__fish_pinctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l pin -d 'A pin to add (`sha256/…`); repeatable' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l from-cert -d 'Pin the key of the first certificate (or public key) in this PEM file: the leaf of a full chain; repeatable. Every certificate is listed with its pin, marked pinned or not pinned' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l connect -d 'Connect here instead of resolving the server name the Matrix way' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l connect-to -d 'During discovery, dial ADDR:PORT2 for connections meant for HOST:PORT (like curl\'s --connect-to; TLS names are unchanged); repeatable. For enrolling through a particular front end' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l trust -d 'How the pins relate to Web PKI' -r -f -a "webpki\t''
pin-only\t''"
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l mode -d 'Enforce or only report mismatches' -r -f -a "enforce\t''
report\t''"
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l expires -d 'When the pins stop being enforced (RFC 3339, or YYYY-MM-DD)' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l roots -d 'Extra trust anchors (PEM) for Web PKI validation' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l note -d 'Free-form note stored with the entry' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l from-cert-all -d 'With --from-cert: pin every certificate of each file, the intermediates and root of a full chain too (a CA pin accepts anything that CA issues for the name)'
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -s y -l yes -d 'Do not ask: pin the leaf'
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -l no-signing-keys -d 'Do not record the peer\'s Matrix signing keys (its requests are then checked with keys fedpin fetches over pinned TLS)'
complete -c pinctl -n "__fish_pinctl_using_subcommand add" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand list" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand list" -l json -d 'Machine-readable output'
complete -c pinctl -n "__fish_pinctl_using_subcommand list" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand remove" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand remove" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -l roots -d 'Extra trust anchors (PEM)' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -l connect -d 'Connect here instead of resolving (only with one server name)' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -l connect-to -d 'During discovery, dial ADDR:PORT2 for connections meant for HOST:PORT (like curl\'s --connect-to); repeatable' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -l timeout -d 'Per-peer timeout in seconds' -r
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -l json -d 'Machine-readable output'
complete -c pinctl -n "__fish_pinctl_using_subcommand verify" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand check" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand check" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand completions" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand hash" -l pins -d 'The pin file' -r -F
complete -c pinctl -n "__fish_pinctl_using_subcommand hash" -s h -l help -d 'Print help'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "add" -d 'Enrol a peer: pin given keys, or connect and choose from the served chain'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "list" -d 'List the peers (a broken pin file: errors on stderr, exit 64)'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "remove" -d 'Remove a peer'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "verify" -d 'Connect to peers now and check they still match their pins'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "check" -d 'Lint the pin file: findings on stdout, exit 1 on errors'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "completions" -d 'Print a shell completion script'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "hash" -d 'Print the pins of PEM/DER certificates or public keys (`-` reads stdin)'
complete -c pinctl -n "__fish_pinctl_using_subcommand help; and not __fish_seen_subcommand_from add list remove verify check completions hash help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
