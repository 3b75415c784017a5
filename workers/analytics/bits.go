package analytics

import "math/bits"

// bitWriter writes the snapshot's people a few bits at a time.
type bitWriter struct {
	b   []byte
	acc uint64 // bits not yet in b, the first in the high end
	n   uint   // how many
}

// write writes the low width bits of v (width ≤ 56).
func (w *bitWriter) write(v uint64, width uint) {
	w.acc |= (v & (1<<width - 1)) << (64 - w.n - width)
	w.n += width
	for w.n >= 8 {
		w.b = append(w.b, byte(w.acc>>56))
		w.acc <<= 8
		w.n -= 8
	}
}

// long writes width bits, more than 56 if need be.
func (w *bitWriter) long(v uint64, width uint) {
	if width > 32 {
		w.write(v>>32, width-32)
		width = 32
	}
	w.write(v, width)
}

func (w *bitWriter) bit(b bool) {
	if b {
		w.write(1, 1)
	} else {
		w.write(0, 1)
	}
}

// gamma writes v (below 1<<63) in Elias gamma code, of v+1: small
// numbers in few bits, any in at most 127.
func (w *bitWriter) gamma(v uint64) {
	n := uint(bits.Len64(v + 1))
	w.long(0, n-1)
	w.long(v+1, n)
}

// rice writes v as v>>k in gamma code and its low k bits: a hash's
// distance to the one before, among n, in about 64 - log2(n) + 2 bits.
func (w *bitWriter) rice(v uint64, k uint) {
	w.gamma(v >> k)
	w.long(v, k)
}

func (w *bitWriter) bytes() []byte {
	if w.n > 0 {
		w.b = append(w.b, byte(w.acc>>56))
		w.acc, w.n = 0, 0
	}
	return w.b
}

// bitReader reads what a bitWriter wrote; past the end it reads zeros and
// remembers that it ran out.
type bitReader struct {
	b   []byte
	i   uint // the next bit
	bad bool
}

func (r *bitReader) read(width uint) uint64 {
	var v uint64
	for range width {
		byteAt := r.i / 8
		if byteAt >= uint(len(r.b)) {
			r.bad = true
			return 0
		}
		v = v<<1 | uint64(r.b[byteAt]>>(7-r.i%8)&1)
		r.i++
	}
	return v
}

func (r *bitReader) bit() bool { return r.read(1) == 1 }

func (r *bitReader) gamma() uint64 {
	zeros := uint(0)
	for !r.bad && r.read(1) == 0 {
		if zeros++; zeros > 63 {
			r.bad = true
			return 0
		}
	}
	return (1<<zeros | r.read(zeros)) - 1
}

func (r *bitReader) rice(k uint) uint64 {
	q := r.gamma()
	if k < 64 && q > 1<<(64-k)-1 {
		r.bad = true
		return 0
	}
	return q<<k | r.read(k)
}
