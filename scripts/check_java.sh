#!/usr/bin/env bash
# Java for Spark: the current stack (Spark 4) needs Java 17 or 21; STACK=spark35 (Spark 3.5) runs on 11 or 17.
# Usage: scripts/check_java.sh [current|spark35]
set -euo pipefail
stack=${1:-current}
case $stack in
  current) need=17; spark="Spark 4" ;;
  spark35) need=11; spark="Spark 3.5" ;;
  *) echo "error: unknown stack '$stack' (current or spark35)" >&2; exit 2 ;;
esac
if ! command -v java >/dev/null 2>&1; then
  cat >&2 <<MSG
error: Java was not found. $spark needs Java $need or newer (17 recommended).
  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y openjdk-17-jre-headless
  macOS:          brew install openjdk@17
  Or set JAVA_HOME to an existing JDK $need+ and put \$JAVA_HOME/bin on PATH.
MSG
  exit 1
fi
version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
if [ -z "$major" ] || [ "$major" -lt "$need" ]; then
  echo "error: Java $version found; $spark needs Java $need or newer (17 recommended)." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless, then make it the default java." >&2
  exit 1
fi
echo "java $version: ok for $spark"
