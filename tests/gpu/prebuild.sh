#!/bin/bash
# For a device machine that cannot build (no C compiler, or no libfuse3/liburing/libcjson
# development files, and no network to install them): build here and copy the binaries and
# the three shared libraries they link into tests/gpu/prebuilt/ (gitignored, about 1 MiB),
# which tests/gpu/device-run.sh uses, with LD_LIBRARY_PATH, when make fails there. The build
# machine's glibc must not be newer than the device's: the highest GLIBC_ version the
# binaries need is printed.
set -eu
cd "$(dirname "$0")/../.."
make -s all
P=tests/gpu/prebuilt
rm -rf "$P"
mkdir -p "$P/lib"
cp build/qvlmoefs build/qvlmoefs-mkckpt "$P/"
for lib in libfuse3.so.3 liburing.so.2 libcjson.so.1; do
	cp -L "$(ldd build/qvlmoefs | awk -v l="$lib" '$1 == l { print $3 }')" "$P/lib/$lib"
done
echo "needs glibc $(objdump -T "$P"/qvlmoefs "$P"/lib/* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
du -sh "$P"
