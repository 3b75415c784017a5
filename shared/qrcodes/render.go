package qrcodes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strings"
	"sync"
	"unicode"

	qr "github.com/piglig/go-qr"
	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/font/sfnt"
	"golang.org/x/image/math/fixed"
	"golang.org/x/text/width"
)

// Image sizes, in pixels: 4096 is 35 cm at 300 dpi.
const (
	MinSize     = 64
	MaxSize     = 4096
	DefaultSize = 512
)

// The formats of GET /api/qrcodes/{scene}/image.
const (
	FormatPNG = "png"
	FormatSVG = "svg"
)

// quietZone is the white border a scanner needs, in modules (the standard's 4).
const quietZone = 4

// dpi is what a PNG says of itself (its pHYs chunk): print software then
// opens a 1024 px code at 8.7 cm rather than at 72 dpi's 36 cm.
const dpi = 300

// fontStack is the SVG caption's font-family: the CJK fonts of macOS,
// Windows and Linux desktops, so a print shop's machine draws Chinese.
const fontStack = `"PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", sans-serif`

// Image is one image of a code: what encodes its url, in what form.
type Image struct {
	Format  string // FormatPNG or FormatSVG
	Size    int    // the code's width in pixels
	Caption string // printed under the code; empty: none
}

// Render draws a QR code of text as o says.
//
// Why piglig/go-qr, of the QR libraries the module proxy serves: it alone
// has a decoder (pure Go), so the tests read every PNG served back to the
// code's url; it exposes the module grid, so the image is drawn at exactly
// the size asked; it has no dependencies. skip2/go-qrcode has had no
// release since 2020 and no decoder, yeqown/go-qrcode/v2 needs a PNG writer
// module that is not served here, and rsc.io/qr is frozen and skips a mask
// pattern.
func (f *Fonts) Render(text string, o Image) ([]byte, error) {
	code, err := qr.EncodeText(text, qr.Medium)
	if err != nil {
		return nil, fmt.Errorf("qr encode: %w", err)
	}
	if o.Format == FormatSVG {
		return svg(code, o), nil
	}
	return f.png(code, o)
}

// png draws black modules on white, each module a whole number of pixels
// (a scanner reads sharp edges best), centred with the quiet zone around
// it; a code too dense for the size comes out larger than asked rather
// than unreadable. A caption goes in a band below, never in the quiet
// zone. Without one the PNG is 1-bit; with one, 16 greys for the glyphs'
// edges.
func (f *Fonts) png(code *qr.QrCode, o Image) ([]byte, error) {
	modules := code.Size() + 2*quietZone
	scale := max(1, o.Size/modules)
	size := max(o.Size, modules)
	offset := (size - modules*scale) / 2
	var band *image.Gray
	if o.Caption != "" {
		var err error
		if band, err = f.captionBand(o.Caption, size, quietZone*scale); err != nil {
			return nil, err
		}
	}
	height := size
	pal := color.Palette{color.White, color.Black}
	if band != nil {
		height += band.Rect.Dy()
		pal = make(color.Palette, 16)
		for i := range pal {
			pal[i] = color.Gray{Y: uint8(255 - i*17)}
		}
	}
	black := uint8(len(pal) - 1)
	img := image.NewPaletted(image.Rect(0, 0, size, height), pal)
	for y := 0; y < code.Size(); y++ {
		for x := 0; x < code.Size(); x++ {
			if !code.Module(x, y) {
				continue
			}
			x0, y0 := offset+(x+quietZone)*scale, offset+(y+quietZone)*scale
			for py := y0; py < y0+scale; py++ {
				row := img.Pix[py*img.Stride:]
				for px := x0; px < x0+scale; px++ {
					row[px] = black
				}
			}
		}
	}
	if band != nil {
		for y := 0; y < band.Rect.Dy(); y++ {
			for x := 0; x < size; x++ {
				img.Pix[(size+y)*img.Stride+x] = uint8((255 - int(band.Pix[y*band.Stride+x]) + 8) / 17)
			}
		}
	}
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("png: %w", err)
	}
	return withDPI(buf.Bytes(), dpi), nil
}

// withDPI inserts a pHYs chunk after the IHDR chunk (the 8-byte signature,
// then 25 bytes), which image/png does not write.
func withDPI(b []byte, dpi int) []byte {
	const afterIHDR = 8 + 25
	ppm := uint32(float64(dpi)/0.0254 + 0.5)
	chunk := make([]byte, 4+4+9+4)
	binary.BigEndian.PutUint32(chunk, 9)
	copy(chunk[4:], "pHYs")
	binary.BigEndian.PutUint32(chunk[8:], ppm)
	binary.BigEndian.PutUint32(chunk[12:], ppm)
	chunk[16] = 1 // the unit is the metre
	binary.BigEndian.PutUint32(chunk[17:], crc32.ChecksumIEEE(chunk[4:17]))
	return append(append(append(make([]byte, 0, len(b)+len(chunk)), b[:afterIHDR]...), chunk...), b[afterIHDR:]...)
}

// svg writes the modules as rectangles (one per run of dark modules in a
// row) in a viewBox of module units, the caption as text in a CJK font
// stack: a vector file print shops scale to any size.
func svg(code *qr.QrCode, o Image) []byte {
	n := code.Size() + 2*quietZone
	fs := float64(n) / 14 // the caption's font size, in modules
	lines := wrap(o.Caption, float64(n)-2, func(r rune) float64 { return estimatedWidth(r) * fs })
	height := float64(n)
	if len(lines) > 0 {
		height += float64(len(lines))*fs*1.3 + fs*0.4
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %s" width="%d" height="%d" shape-rendering="crispEdges">`,
		n, trimFloat(height), o.Size, int(float64(o.Size)*height/float64(n)+0.5))
	fmt.Fprintf(&b, `<rect width="%d" height="%s" fill="#fff"/><g fill="#000">`, n, trimFloat(height))
	for y := 0; y < code.Size(); y++ {
		for x := 0; x < code.Size(); {
			if !code.Module(x, y) {
				x++
				continue
			}
			run := 1
			for x+run < code.Size() && code.Module(x+run, y) {
				run++
			}
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="1"/>`, x+quietZone, y+quietZone, run)
			x += run
		}
	}
	b.WriteString(`</g>`)
	for i, line := range lines {
		fmt.Fprintf(&b, `<text x="%s" y="%s" font-family='%s' font-size="%s" text-anchor="middle" fill="#000">`,
			trimFloat(float64(n)/2), trimFloat(float64(n)+fs*(1.3*float64(i)+1)), fontStack, trimFloat(fs))
		xmlEscape(&b, line)
		b.WriteString(`</text>`)
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func trimFloat(f float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", f), "0"), ".")
}

func xmlEscape(b *strings.Builder, s string) {
	for _, r := range s {
		switch r {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		default:
			b.WriteRune(r)
		}
	}
}

// estimatedWidth is a rune's width in ems where no font is at hand (SVG):
// East Asian wide characters fill the em, others about half of it.
func estimatedWidth(r rune) float64 {
	switch width.LookupRune(r).Kind() {
	case width.EastAsianWide, width.EastAsianFullwidth:
		return 1
	}
	return 0.6
}

// wrap breaks text into lines no wider than room, between any two runes
// (Chinese has no spaces), at a space when the line has one.
func wrap(text string, room float64, adv func(rune) float64) []string {
	var lines []string
	var line []rune
	w := 0.0
	for _, r := range strings.TrimSpace(text) {
		a := adv(r)
		if len(line) > 0 && w+a > room {
			cut := len(line)
			if i := lastSpace(line); i > 0 && !unicode.IsSpace(r) {
				cut = i
			}
			lines = append(lines, strings.TrimSpace(string(line[:cut])))
			line = append([]rune{}, line[cut:]...)
			w = 0
			for _, c := range line {
				w += adv(c)
			}
		}
		line = append(line, r)
		w += a
	}
	if s := strings.TrimSpace(string(line)); s != "" {
		lines = append(lines, s)
	}
	return lines
}

func lastSpace(line []rune) int {
	for i := len(line) - 1; i > 0; i-- {
		if line[i] == ' ' {
			return i + 1
		}
	}
	return -1
}

// Fonts are the fonts PNG captions are drawn with, loaded on first use: a
// CJK font (QR_CAPTION_FONT, else the first found of fontPaths), and Go's
// own font for Latin when there is none. A nil *Fonts draws no caption.
type Fonts struct {
	path string

	once sync.Once
	cjk  *sfnt.Font // nil: none found
	from string     // where cjk came from
	latn *sfnt.Font
	err  error // QR_CAPTION_FONT unreadable
}

// fontPaths are where Debian's fonts-wqy-microhei, fonts-wqy-zenhei and
// fonts-noto-cjk, other distributions' Noto CJK, macOS and Windows keep a
// CJK font.
var fontPaths = []string{
	"/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
	"/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
	"/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
	"/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
	"/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
	"/System/Library/Fonts/PingFang.ttc",
	`C:\Windows\Fonts\msyh.ttc`,
}

// NewFonts returns the caption fonts; path is QR_CAPTION_FONT (empty:
// search fontPaths).
func NewFonts(path string) *Fonts { return &Fonts{path: path} }

func (f *Fonts) load() {
	f.latn, _ = opentype.Parse(goregular.TTF)
	paths := fontPaths
	if f.path != "" {
		paths = []string{f.path}
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			var c *sfnt.Collection
			if c, err = sfnt.ParseCollection(b); err == nil {
				if f.cjk, err = c.Font(0); err != nil {
					f.cjk, err = alignedFont(b)
				}
			}
		}
		if err == nil {
			f.from = p
			return
		}
		if f.path != "" {
			f.err = fmt.Errorf("QR_CAPTION_FONT=%s: %w", f.path, err)
		}
	}
}

// alignedFont reads the first font of a TrueType file or collection whose
// tables do not start on 4-byte boundaries, as the OpenType spec wants
// and x/image/font/sfnt insists (Debian's wqy-microhei.ttc): the tables
// are copied into a font of their own, each at an aligned offset.
func alignedFont(b []byte) (*sfnt.Font, error) {
	be := binary.BigEndian
	off := 0
	if len(b) >= 16 && string(b[:4]) == "ttcf" {
		off = int(be.Uint32(b[12:]))
	}
	if off+12 > len(b) {
		return nil, errors.New("not a font")
	}
	n := int(be.Uint16(b[off+4:]))
	if off+12+16*n > len(b) {
		return nil, errors.New("not a font")
	}
	out := append([]byte{}, b[off:off+12+16*n]...)
	for i := 0; i < n; i++ {
		rec := out[12+16*i:]
		o, l := int(be.Uint32(rec[8:])), int(be.Uint32(rec[12:]))
		if o+l > len(b) || o < 0 || l < 0 {
			return nil, errors.New("a table past the end of the font")
		}
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
		be.PutUint32(rec[8:], uint32(len(out)))
		out = append(out, b[o:o+l]...)
	}
	return sfnt.Parse(out)
}

// Source says which font draws captions, for the log: a path, or why none.
func (f *Fonts) Source() string {
	f.once.Do(f.load)
	switch {
	case f.err != nil:
		return f.err.Error()
	case f.cjk == nil:
		return "no CJK font found: captions in Latin letters only (install fonts-wqy-microhei or set QR_CAPTION_FONT)"
	}
	return f.from
}

// GlyphError is a caption with characters no loaded font draws: an
// answer with boxes for them would go to print.
type GlyphError struct {
	Missing string // the characters, each once
	NoCJK   bool   // no CJK font was found: installing one would help
}

func (e *GlyphError) Error() string {
	if e.NoCJK {
		return fmt.Sprintf("the caption has characters (%s) no installed font draws: install a CJK font (Debian: fonts-wqy-microhei) or set QR_CAPTION_FONT to one", e.Missing)
	}
	return fmt.Sprintf("the caption has characters (%s) that the CJK font does not draw: change the label, or leave caption off", e.Missing)
}

// ErrFont is QR_CAPTION_FONT naming a file that is not a readable font.
var ErrFont = errors.New("the caption font cannot be read")

// fontsFor returns, for each rune of text, the font that draws it: the
// CJK font when it can (one look for the whole caption), else Go's.
func (f *Fonts) fontsFor(text string) (map[rune]*sfnt.Font, error) {
	if f == nil {
		return nil, errors.New("no caption fonts")
	}
	f.once.Do(f.load)
	if f.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFont, f.err)
	}
	var buf sfnt.Buffer
	has := func(ft *sfnt.Font, r rune) bool {
		if ft == nil {
			return false
		}
		i, err := ft.GlyphIndex(&buf, r)
		return err == nil && i != 0
	}
	out := map[rune]*sfnt.Font{}
	var missing []rune
	for _, r := range text {
		switch {
		case has(f.cjk, r):
			out[r] = f.cjk
		case has(f.latn, r), r == ' ':
			out[r] = f.latn
		default:
			if !strings.ContainsRune(string(missing), r) {
				missing = append(missing, r)
			}
		}
	}
	if len(missing) > 0 {
		return nil, &GlyphError{Missing: string(missing), NoCJK: f.cjk == nil}
	}
	return out, nil
}

// Check reports whether a caption can be drawn, before an answer starts.
func (f *Fonts) Check(caption string) error {
	_, err := f.fontsFor(strings.TrimSpace(caption))
	return err
}

// captionBand draws the caption, centred, in lines as wide as the code
// less its margins, in a font a sixteenth of the code's width (smaller for
// a long caption, down to a readable least), into a white band.
func (f *Fonts) captionBand(caption string, size, margin int) (*image.Gray, error) {
	caption = strings.TrimSpace(caption)
	fonts, err := f.fontsFor(caption)
	if err != nil {
		return nil, err
	}
	room := float64(size - 2*margin)
	px := float64(size) / 16
	least := max(10, float64(size)/40)
	var faces map[rune]font.Face
	var lines []string
	for {
		byFont := map[*sfnt.Font]font.Face{}
		faces = map[rune]font.Face{}
		for r, ft := range fonts {
			if byFont[ft] == nil {
				if byFont[ft], err = opentype.NewFace(ft, &opentype.FaceOptions{Size: px, DPI: 72, Hinting: font.HintingFull}); err != nil {
					return nil, fmt.Errorf("caption font: %w", err)
				}
			}
			faces[r] = byFont[ft]
		}
		lines = wrap(caption, room, func(r rune) float64 {
			a, _ := faces[r].GlyphAdvance(r)
			return float64(a) / 64
		})
		if len(lines) <= 3 || px <= least {
			break
		}
		px = max(least, px*0.85)
	}
	lineHeight := int(px*1.3 + 0.5)
	band := image.NewGray(image.Rect(0, 0, size, lineHeight*len(lines)+lineHeight/2))
	draw.Draw(band, band.Rect, image.White, image.Point{}, draw.Src)
	for i, line := range lines {
		var w fixed.Int26_6
		for _, r := range line {
			a, _ := faces[r].GlyphAdvance(r)
			w += a
		}
		d := font.Drawer{Dst: band, Src: image.Black, Dot: fixed.P((size-w.Round())/2, lineHeight*i+int(px))}
		for _, r := range line {
			d.Face = faces[r]
			d.DrawString(string(r))
		}
	}
	return band, nil
}
