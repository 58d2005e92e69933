# bash completion for tcpfix(1)                             -*- shell-script -*-
#
# Source of the installed completion: at build time man/docgen.cpp fills in
# the @RUN_...@ lists from the variable table (policy::variables()), so
# `tcpfix run --<TAB>` offers exactly the options tcpfix run takes. The other
# subcommands' options are read from their own --help, so they follow the
# installed binary. `tcpfix attach` takes run's policy options (not
# --library) and names its target with --cgroup, --unit or a command.

_tcpfix_run_options="@RUN_OPTIONS@"
_tcpfix_run_value_options="@RUN_VALUE_OPTIONS@"

# Completes the value of `tcpfix run` option $1 for the word $cur.
_tcpfix_run_value() {
    local cur=$2
    case $1 in
@RUN_VALUE_CASES@
        *) COMPREPLY=() ;;
    esac
}

_tcpfix_files() {
    compopt -o filenames 2>/dev/null  # a '/' after directories
    mapfile -t COMPREPLY < <(compgen -f -- "$1")
}

# The command after `tcpfix run [OPTIONS] [--]` starts at word $1.
_tcpfix_complete_command() {
    local start=$1
    if declare -F _command_offset >/dev/null; then
        _command_offset "$start"  # bash-completion: the command's own completion
    elif ((COMP_CWORD == start)); then
        mapfile -t COMPREPLY < <(compgen -c -- "${COMP_WORDS[COMP_CWORD]}")
    else
        _tcpfix_files "${COMP_WORDS[COMP_CWORD]}"
    fi
}

_tcpfix() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    local subcommands="run probe churn doctor ab attach top"
    local i sub="" subidx=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -*) ;;
            *) sub=${COMP_WORDS[i]} subidx=$i; break ;;
        esac
    done

    if [[ -z $sub ]]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "--help --version" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$subcommands" -- "$cur")
        fi
        return 0
    fi

    # --opt=value: bash splits at '=' (COMP_WORDBREAKS).
    local opt=$prev
    if [[ $cur == "=" ]]; then
        opt=$prev cur=""
    elif [[ $prev == "=" ]] && ((COMP_CWORD >= 2)); then
        opt=${COMP_WORDS[COMP_CWORD - 2]}
    fi

    case $sub in
        run | attach)
            local options=$_tcpfix_run_options value_options=$_tcpfix_run_value_options
            if [[ $sub == attach ]]; then
                options="${options/--library/--cgroup --unit --json}"
                value_options="${value_options/--library/--cgroup --unit}"
                if [[ $opt == --cgroup ]]; then
                    compopt -o filenames 2>/dev/null
                    mapfile -t COMPREPLY < <(compgen -d -- "$cur")
                    return 0
                elif [[ $opt == --unit ]]; then
                    return 0
                fi
            fi
            # Where does the command start? After "--", or at the first word
            # that is neither an option nor an option's value.
            local j w
            for ((j = subidx + 1; j < COMP_CWORD; j++)); do
                w=${COMP_WORDS[j]}
                if [[ $w == "--" ]]; then
                    _tcpfix_complete_command $((j + 1))
                    return 0
                elif [[ $w == "=" ]]; then
                    ((j++))  # the value of --opt=value
                elif [[ " $value_options " == *" $w "* ]]; then
                    [[ ${COMP_WORDS[j + 1]} == "=" ]] || ((j++))
                elif [[ $w != -* ]]; then
                    _tcpfix_complete_command "$j"
                    return 0
                fi
            done
            if [[ " $value_options " == *" $opt "* ]]; then
                _tcpfix_run_value "$opt" "$cur"
                return 0
            fi
            if [[ $cur == -* ]]; then
                mapfile -t COMPREPLY < <(compgen -W "$options --" -- "$cur")
            else
                mapfile -t COMPREPLY < <(compgen -c -- "$cur")
            fi
            ;;
        probe | churn | doctor | ab | top)
            if [[ $sub == ab ]]; then  # ab runs a command after "--"
                local j
                for ((j = subidx + 1; j < COMP_CWORD; j++)); do
                    if [[ ${COMP_WORDS[j]} == "--" ]]; then
                        _tcpfix_complete_command $((j + 1))
                        return 0
                    fi
                done
            fi
            if [[ $cur == -* ]]; then
                local options
                # CLI11's option lines: "  -n,--runs INT  runs per arm"
                options=$("${COMP_WORDS[0]}" "$sub" --help 2>/dev/null |
                    sed -nE 's/^ +(-[^ ]+).*/\1/p' | tr ',' '\n')
                mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")
            elif [[ $opt == --library || $opt == --binary || $opt == --dir || $opt == --plot || $opt == --prom ]]; then
                _tcpfix_files "$cur"
            elif [[ $sub == top && $opt != -* ]]; then
                # The shares of this user in /dev/shm: tcpfix-<uid>-<name>.v<layout>
                local f uid names=()
                uid=$(id -u)
                for f in /dev/shm/tcpfix-"$uid"-*.v*; do
                    [[ -e $f ]] || continue
                    f=${f#/dev/shm/tcpfix-"$uid"-}
                    names+=("${f%.v*}")
                done
                mapfile -t COMPREPLY < <(compgen -W "${names[*]}" -- "$cur")
            elif [[ $sub == churn && $opt == --close ]]; then
                mapfile -t COMPREPLY < <(compgen -W "graceful rst" -- "$cur")
            fi
            ;;
    esac
    return 0
}

complete -F _tcpfix tcpfix
