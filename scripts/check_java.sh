#!/usr/bin/env bash
# Spark 3.5 needs Java 11 or 17 (8 is deprecated, 21 not supported by 3.5's Hadoop client here).
set -euo pipefail
if ! command -v java >/dev/null 2>&1; then
  cat >&2 <<'MSG'
error: Java was not found. Spark needs Java 11 or newer (17 recommended).
  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y openjdk-17-jre-headless
  macOS:          brew install openjdk@17
  Or set JAVA_HOME to an existing JDK 11+ and put $JAVA_HOME/bin on PATH.
MSG
  exit 1
fi
version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
if [ -z "$major" ] || [ "$major" -lt 11 ]; then
  echo "error: Java $version found; Spark needs Java 11 or newer (17 recommended)." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless, then make it the default java." >&2
  exit 1
fi
echo "java $version: ok"
