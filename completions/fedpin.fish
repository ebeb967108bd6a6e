# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fedpin_global_optspecs
    string join \n log-format= h/help V/version
end

function __fish_fedpin_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fedpin_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fedpin_using_subcommand
    set -l cmd (__fish_fedpin_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fedpin -n "__fish_fedpin_needs_command" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_needs_command" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_needs_command" -s V -l version -d 'Print version'
complete -c fedpin -n "__fish_fedpin_needs_command" -f -a "run" -d 'Run the configured listeners until SIGTERM / SIGINT'
complete -c fedpin -n "__fish_fedpin_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c fedpin -n "__fish_fedpin_needs_command" -f -a "demo" -d 'Self-contained loopback demo: a genuine peer passes, a CA-valid impostor is blocked with an alert'
complete -c fedpin -n "__fish_fedpin_needs_command" -f -a "check-config" -d 'Validate the config and its pin file; exit 0, or 64 with located errors'
complete -c fedpin -n "__fish_fedpin_needs_command" -f -a "ca" -d 'Manage the interception CA'
complete -c fedpin -n "__fish_fedpin_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fedpin -n "__fish_fedpin_using_subcommand run" -l config -d 'Config file' -r -F
complete -c fedpin -n "__fish_fedpin_using_subcommand run" -l drain-secs -d 'On SIGTERM: stop accepting, then wait this long for open tunnels and connections to finish before exiting' -r
complete -c fedpin -n "__fish_fedpin_using_subcommand run" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_using_subcommand run" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_using_subcommand completions" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_using_subcommand completions" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_using_subcommand demo" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_using_subcommand demo" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_using_subcommand check-config" -l config -d 'Config file' -r -F
complete -c fedpin -n "__fish_fedpin_using_subcommand check-config" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and not __fish_seen_subcommand_from init help" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and not __fish_seen_subcommand_from init help" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and not __fish_seen_subcommand_from init help" -f -a "init" -d 'Create the interception CA (key mode 0600) and print the Synapse snippet'
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and not __fish_seen_subcommand_from init help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and __fish_seen_subcommand_from init" -l dir -d 'Directory for fedpin-ca.pem and fedpin-ca.key' -r -F
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and __fish_seen_subcommand_from init" -l proxy -d 'The outbound listener Synapse should use as its proxy' -r
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and __fish_seen_subcommand_from init" -l log-format -d 'Log format: json (default when stderr is not a terminal) or pretty' -r -f -a "json\t''
pretty\t''"
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help'
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and __fish_seen_subcommand_from help" -f -a "init" -d 'Create the interception CA (key mode 0600) and print the Synapse snippet'
complete -c fedpin -n "__fish_fedpin_using_subcommand ca; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and not __fish_seen_subcommand_from run completions demo check-config ca help" -f -a "run" -d 'Run the configured listeners until SIGTERM / SIGINT'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and not __fish_seen_subcommand_from run completions demo check-config ca help" -f -a "completions" -d 'Print a shell completion script'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and not __fish_seen_subcommand_from run completions demo check-config ca help" -f -a "demo" -d 'Self-contained loopback demo: a genuine peer passes, a CA-valid impostor is blocked with an alert'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and not __fish_seen_subcommand_from run completions demo check-config ca help" -f -a "check-config" -d 'Validate the config and its pin file; exit 0, or 64 with located errors'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and not __fish_seen_subcommand_from run completions demo check-config ca help" -f -a "ca" -d 'Manage the interception CA'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and not __fish_seen_subcommand_from run completions demo check-config ca help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fedpin -n "__fish_fedpin_using_subcommand help; and __fish_seen_subcommand_from ca" -f -a "init" -d 'Create the interception CA (key mode 0600) and print the Synapse snippet'
