package qrcodes

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"

	qr "github.com/piglig/go-qr"
)

// Image sizes, in pixels.
const (
	MinSize     = 64
	MaxSize     = 2048
	DefaultSize = 512
)

// quietZone is the white border a scanner needs, in modules (the standard's 4).
const quietZone = 4

// PNG renders a QR code of text as a size×size PNG: black modules on
// white, each module a whole number of pixels (a scanner reads sharp edges
// best), centred with the quiet zone around it. A code too dense for size
// comes out larger than asked rather than unreadable.
//
// Why piglig/go-qr, of the QR libraries the module proxy serves: it alone
// has a decoder (pure Go), so the tests read every PNG served back to the
// code's url; it exposes the module grid, so the image is drawn at exactly
// the size asked, as a two-colour paletted PNG; it has no dependencies.
// skip2/go-qrcode has had no release since 2020 and no decoder,
// yeqown/go-qrcode/v2 needs a PNG writer module that is not served here,
// and rsc.io/qr is frozen and skips a mask pattern.
func PNG(text string, size int) ([]byte, error) {
	code, err := qr.EncodeText(text, qr.Medium)
	if err != nil {
		return nil, fmt.Errorf("qr encode: %w", err)
	}
	modules := code.Size() + 2*quietZone
	scale := max(1, size/modules)
	size = max(size, modules)
	offset := (size - modules*scale) / 2
	img := image.NewPaletted(image.Rect(0, 0, size, size), color.Palette{color.White, color.Black})
	for y := 0; y < code.Size(); y++ {
		for x := 0; x < code.Size(); x++ {
			if !code.Module(x, y) {
				continue
			}
			x0, y0 := offset+(x+quietZone)*scale, offset+(y+quietZone)*scale
			for py := y0; py < y0+scale; py++ {
				row := img.Pix[py*img.Stride:]
				for px := x0; px < x0+scale; px++ {
					row[px] = 1
				}
			}
		}
	}
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("png: %w", err)
	}
	return buf.Bytes(), nil
}
