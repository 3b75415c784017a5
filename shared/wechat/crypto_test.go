package wechat

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// The WXBizMsgCrypt sample published with WeChat's safe-mode documentation.
const (
	sampleToken     = "spamtest"
	sampleAESKey    = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	sampleAppID     = "wx2c2769f8efd9abc2"
	sampleTimestamp = "1409735669"
	sampleNonce     = "1320562132"
	sampleMsgSign   = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
	sampleEncrypt   = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)

func TestSampleVectorDecrypt(t *testing.T) {
	if !VerifyMsgSignature(sampleToken, sampleTimestamp, sampleNonce, sampleEncrypt, sampleMsgSign) {
		t.Fatal("msg_signature of the published sample does not verify")
	}
	c, err := NewCipher(sampleAESKey, sampleAppID)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := c.Decrypt(sampleEncrypt)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	m, err := Parse(plain)
	if err != nil {
		t.Fatalf("Parse(%q): %v", plain, err)
	}
	if m.MsgType != MsgText || m.FromUserName == "" || m.ToUserName == "" {
		t.Errorf("decrypted sample = %q, want a text message", plain)
	}
}

// The Java SDK's test fixes the random prefix, which pins the ciphertext.
func TestSampleVectorEncrypt(t *testing.T) {
	c, err := NewCipher(sampleAESKey, "wxb11529c136998cb6")
	if err != nil {
		t.Fatal(err)
	}
	c.random = strings.NewReader("aaaabbbbccccdddd")
	got, err := c.Encrypt([]byte("我是中文abcd123"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
	if got != want {
		t.Fatalf("Encrypt = %s\nwant      %s", got, want)
	}
	plain, err := c.Decrypt(got)
	if err != nil || string(plain) != "我是中文abcd123" {
		t.Fatalf("Decrypt(Encrypt) = %q, %v", plain, err)
	}
}

func TestRoundTrip(t *testing.T) {
	c, err := NewCipher(sampleAESKey, sampleAppID)
	if err != nil {
		t.Fatal(err)
	}
	// Sizes around the 32-byte padding boundary, including an exact multiple.
	for n := 0; n < 100; n++ {
		msg := bytes.Repeat([]byte{'x'}, n)
		enc, err := c.Encrypt(msg)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := base64.StdEncoding.DecodeString(enc)
		if len(raw)%32 != 0 {
			t.Fatalf("n=%d: ciphertext %d bytes, want a multiple of 32", n, len(raw))
		}
		got, err := c.Decrypt(enc)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("n=%d: round trip = %q, %v", n, got, err)
		}
	}
	a, _ := c.Encrypt([]byte("same"))
	b, _ := c.Encrypt([]byte("same"))
	if a == b {
		t.Error("two encryptions of the same message are identical: the random prefix is not random")
	}
}

func TestNewCipherRejectsBadKeys(t *testing.T) {
	for _, key := range []string{"", "short", sampleAESKey + "A", sampleAESKey[:42] + "!"} {
		if _, err := NewCipher(key, sampleAppID); !errors.Is(err, ErrAESKey) {
			t.Errorf("NewCipher(%q) error = %v, want ErrAESKey", key, err)
		}
	}
}

func TestDecryptErrors(t *testing.T) {
	c, _ := NewCipher(sampleAESKey, sampleAppID)
	other, _ := NewCipher(sampleAESKey, "wx_other_app")
	// raw seals arbitrary plaintext (already padded) with the sample key.
	raw := func(plain []byte) string {
		padded := append([]byte(nil), plain...)
		enc, err := c.encryptBlocks(padded)
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	pkcs := func(b []byte) []byte {
		pad := 32 - len(b)%32
		return append(b, bytes.Repeat([]byte{byte(pad)}, pad)...)
	}
	wrongApp, _ := other.Encrypt([]byte("<xml/>"))
	hugeLen := append(make([]byte, 16), 0xff, 0xff, 0xff, 0xff)
	badPad := append(make([]byte, 31), 0)
	mixedPad := append(make([]byte, 28), 1, 2, 3, 4)
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"not base64", "!!!not base64!!!", ErrBase64},
		{"empty", "", ErrBlockSize},
		{"short block", base64.StdEncoding.EncodeToString(make([]byte, 15)), ErrBlockSize},
		{"not whole blocks", base64.StdEncoding.EncodeToString(make([]byte, 33)), ErrBlockSize},
		{"pad byte zero", raw(badPad), ErrPadding},
		{"pad bytes differ", raw(mixedPad), ErrPadding},
		{"too short for header", raw(pkcs(make([]byte, 10))), ErrLength},
		{"length beyond buffer", raw(pkcs(hugeLen)), ErrLength},
		{"wrong appid", wrongApp, ErrAppID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Decrypt(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decrypt = %q, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestSeal(t *testing.T) {
	c, _ := NewCipher(sampleAESKey, sampleAppID)
	reply := TextReply("hi ]]> there").AppendXML(nil, "openid", "gh_1", 1)
	env, err := c.Seal(sampleToken, reply, "1700000000", "n0nce")
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(env)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := m.Field("MsgSignature")
	ts, _ := m.Field("TimeStamp")
	nonce, _ := m.Field("Nonce")
	if ts != "1700000000" || nonce != "n0nce" {
		t.Errorf("envelope TimeStamp=%q Nonce=%q", ts, nonce)
	}
	if !VerifyMsgSignature(sampleToken, ts, nonce, m.Encrypt, sig) {
		t.Error("envelope MsgSignature does not verify")
	}
	plain, err := c.Decrypt(m.Encrypt)
	if err != nil || !bytes.Equal(plain, reply) {
		t.Errorf("sealed reply decrypts to %q, %v", plain, err)
	}
}

// encryptBlocks CBC-encrypts whole blocks as-is; tests use it to forge
// ciphertexts with bad padding or length fields.
func (c *Cipher) encryptBlocks(buf []byte) (string, error) {
	if len(buf)%aes.BlockSize != 0 {
		return "", ErrBlockSize
	}
	cipher.NewCBCEncrypter(c.block, c.iv).CryptBlocks(buf, buf)
	return base64.StdEncoding.EncodeToString(buf), nil
}
