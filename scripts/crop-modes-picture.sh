#!/usr/bin/env bash
# Makes the README's crop-mode picture: one photo before (with the squares that crop = "center"
# and crop = "face" cut drawn on it) and after, for each of none / center / face, side by side.
# The squares come from the pipeline itself (examples/pipeline_bench prints the crop it made).
#   bash scripts/crop-modes-picture.sh [OUT.png]
# Environment:
#   PHOTOSYNC_TEST_PHOTOS=DIR  the shared photos folder (default ../shared/photos)
#   PHOTO=PATH                 the photo (default: the astronaut portrait, trimmed to a 4:3
#                              landscape so that the centre and the face squares differ)
#   SIDE=N                     height of each panel in the picture (default 240)
#   PROFILE=NAME               cargo profile the example is built with (default release; dev
#                              reuses a debug build, where the image crates are optimised too)
set -euo pipefail

OUT="${1:-docs/crop-modes.png}"
PHOTOS="${PHOTOSYNC_TEST_PHOTOS:-../shared/photos}"
SIDE="${SIDE:-240}"
CONVERT=/usr/bin/convert
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [[ ! -x "$CONVERT" || ! -f "$FONT" ]]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends imagemagick fonts-dejavu-core >&2
fi
PROFILE="${PROFILE:-release}"
cargo build --profile "$PROFILE" --example pipeline_bench >&2
BIN="${CARGO_TARGET_DIR:-target}/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/examples/pipeline_bench"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -n "${PHOTO:-}" ]]; then
  cp "$PHOTO" "$work/before.png"
else
  "$CONVERT" "$PHOTOS/png-rgb_astronaut_512x512.png" -crop 512x384+0+0 +repage "$work/before.png"
fi

# crop_of MODE: the "WxH+X+Y" the pipeline reports for that mode (empty for none).
crop_of() {
  mkdir -p "$work/$1"
  "$BIN" --iterations 1 --crop "$1" --max-side "$SIDE" --out "$work/$1" "$work/before.png" |
    awk -F'\t' 'NR == 1 { n = split($7, w, " "); print (n >= 3 ? w[3] : "") }'
}
panel() { # panel FILE LABEL -> a SIDE-high panel with a caption
  "$CONVERT" "$1" -resize "x$SIDE" -background white -gravity south -splice 0x24 \
    -font "$FONT" -pointsize 15 -annotate +0+4 "$2" "$3"
}

draw=()
for mode in center face; do
  geometry="$(crop_of "$mode")"
  [[ -n "$geometry" ]] || continue
  read -r w x y < <(echo "$geometry" | awk -F'[x+]' '{ print $1, $3, $4 }')
  colour=$([[ $mode == center ]] && echo "#1f77b4" || echo "#ff7f0e")
  draw+=(-stroke "$colour" -strokewidth 4 -fill none -draw "rectangle $x,$y $((x + w - 1)),$((y + w - 1))")
  echo "$mode: $geometry" >&2
done
crop_of none >/dev/null
"$CONVERT" "$work/before.png" "${draw[@]}" "$work/marked.png"
panel "$work/marked.png" "before: centre (blue), face (orange)" "$work/p0.png"
panel "$work/none/before.png.out.jpg" 'crop = "none"' "$work/p1.png"
panel "$work/center/before.png.out.jpg" 'crop = "center"' "$work/p2.png"
panel "$work/face/before.png.out.jpg" 'crop = "face"' "$work/p3.png"
mkdir -p "$(dirname "$OUT")"
# A palette of 256 colours keeps the picture small enough to live in the repository.
"$CONVERT" "$work/p0.png" "$work/p1.png" "$work/p2.png" "$work/p3.png" \
  -background white -splice 12x0 +append -alpha off -colors 256 -strip "$OUT"
echo "wrote $OUT" >&2
