#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing — the one path `make test`
# and .ci/run both take, so CI cannot pass where the README's command fails:
#   chromium            the browser test (tests/ui/test_browser.py) drives Debian's Chromium;
#                       no browser can be downloaded here
#   fonts-wqy-microhei  a CJK font, so the page's Chinese is legible in screenshots
#   docker-compose      tests/docker validates compose.yaml with `docker-compose config`, which
#                       needs no engine (installed without the recommended docker.io)
# As root it installs them; otherwise through `sudo -n`; with neither it prints the command.
set -euo pipefail

missing=()
missing_bare=()  # installed with --no-install-recommends
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing+=(fonts-wqy-microhei)
command -v docker-compose >/dev/null 2>&1 || missing_bare+=(docker-compose)

if [ ${#missing[@]} -eq 0 ] && [ ${#missing_bare[@]} -eq 0 ]; then
    exit 0
fi

# waits for another apt (an unattended upgrade, a second install) instead of failing at once
apt="apt-get -o DPkg::Lock::Timeout=300"
commands=("$apt update")
[ ${#missing[@]} -eq 0 ] || commands+=("$apt install -y ${missing[*]}")
[ ${#missing_bare[@]} -eq 0 ] || commands+=("$apt install -y --no-install-recommends ${missing_bare[*]}")

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "The tests need Debian packages that are not installed: ${missing[*]} ${missing_bare[*]}" >&2
    echo "This script can install them only as root or with password-less sudo. Run:" >&2
    for c in "${commands[@]}"; do echo "    sudo $c" >&2; done
    echo "then run the tests again." >&2
    exit 1
fi

echo "installing the Debian packages the tests need: ${missing[*]} ${missing_bare[*]}"
for c in "${commands[@]}"; do
    # shellcheck disable=SC2086  # the words of each command are meant to split
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" $c -q >/dev/null
done
