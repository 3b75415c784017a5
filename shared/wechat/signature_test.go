package wechat

import (
	"strings"
	"testing"
)

func TestSignature(t *testing.T) {
	// Computed independently: printf '%s' 13205621321409735669spamtest | sha1sum
	// (nonce, timestamp, token in lexicographic order).
	const want = "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"
	got := Signature(sampleToken, sampleTimestamp, sampleNonce)
	if got != want {
		t.Fatalf("Signature = %s, want %s", got, want)
	}
	if !VerifySignature(sampleToken, sampleTimestamp, sampleNonce, got) {
		t.Fatal("VerifySignature rejects Signature's own output")
	}
	tests := []struct {
		name string
		sig  string
		ok   bool
	}{
		{"valid", got, true},
		{"upper-case hex", strings.ToUpper(got), true},
		{"flipped digit", flip(got), false},
		{"empty", "", false},
		{"short", got[:39], false},
		{"long", got + "0", false},
		{"not hex", strings.Repeat("z", 40), false},
	}
	for _, tt := range tests {
		if ok := VerifySignature(sampleToken, sampleTimestamp, sampleNonce, tt.sig); ok != tt.ok {
			t.Errorf("%s: VerifySignature = %v, want %v", tt.name, ok, tt.ok)
		}
	}
	if VerifySignature("other-token", sampleTimestamp, sampleNonce, got) {
		t.Error("signature verified under another token")
	}
}

func TestSignatureSortsParts(t *testing.T) {
	if Signature("b", "a", "c") != Signature("c", "b", "a") {
		t.Error("signature depends on argument order")
	}
	// Long parts (a large Encrypt) exceed the stack buffer and must still work.
	long := strings.Repeat("x", 4096)
	s := Signature("t", "1", "n", long)
	if !VerifyMsgSignature("t", "1", "n", long, s) {
		t.Error("long msg_signature does not verify")
	}
}

func TestVerifySignatureDoesNotAllocate(t *testing.T) {
	sig := Signature(sampleToken, sampleTimestamp, sampleNonce)
	allocs := testing.AllocsPerRun(100, func() {
		VerifySignature(sampleToken, sampleTimestamp, sampleNonce, sig)
	})
	if allocs != 0 {
		t.Errorf("VerifySignature allocates %v times per call", allocs)
	}
}

func flip(s string) string {
	b := []byte(s)
	if b[0] == '0' {
		b[0] = '1'
	} else {
		b[0] = '0'
	}
	return string(b)
}
