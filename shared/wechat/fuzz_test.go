package wechat

import (
	"encoding/xml"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

var subjectRE = regexp.MustCompile(`^(msg|event)\.[a-z0-9_]{1,64}$`)

func addSamples(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.xml"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzParse(f *testing.F) {
	addSamples(f)
	f.Add([]byte("<xml><MsgType>event</MsgType><Event>a.b</Event></xml>"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if s := m.Subject(); !subjectRE.MatchString(s) {
			t.Fatalf("subject %q escapes msg.*/event.*", s)
		}
		for _, account := range []string{DefaultAccount, "shop-2"} {
			if k := m.DedupKey(account, data); !dedupKeyRE.MatchString(k) {
				t.Fatalf("dedup key %q is not a safe key", k)
			}
		}
		if scene, kind, ok := m.SceneScan(); ok && (scene == "" || (kind != KindScan && kind != KindSubscribe)) {
			t.Fatalf("SceneScan = %q, %q", scene, kind)
		}
	})
}

func FuzzDecrypt(f *testing.F) {
	f.Add(sampleEncrypt)
	f.Add("")
	f.Add("AAAAAAAAAAAAAAAAAAAAAA==")
	f.Add(strings.Repeat("A", 44))
	c, err := NewCipher(sampleAESKey, sampleAppID)
	if err != nil {
		f.Fatal(err)
	}
	sentinels := []error{ErrBase64, ErrBlockSize, ErrPadding, ErrLength, ErrAppID}
	f.Fuzz(func(t *testing.T, in string) {
		plain, err := c.Decrypt(in)
		if err == nil {
			// Only a genuine ciphertext for this AppID gets here; it must re-seal.
			enc, err := c.Encrypt(plain)
			if err != nil {
				t.Fatal(err)
			}
			if back, err := c.Decrypt(enc); err != nil || string(back) != string(plain) {
				t.Fatalf("round trip of %q failed: %v", plain, err)
			}
			return
		}
		for _, s := range sentinels {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("Decrypt error %v is not one of the documented errors", err)
	})
}

func FuzzSubjectFor(f *testing.F) {
	f.Add("text", "")
	f.Add("event", "SCAN")
	f.Add("event", "a.>")
	f.Add("EVENT", "*")
	f.Fuzz(func(t *testing.T, msgType, event string) {
		s := SubjectFor(msgType, event)
		if !subjectRE.MatchString(s) {
			t.Fatalf("SubjectFor(%q, %q) = %q", msgType, event, s)
		}
		tok := s[strings.IndexByte(s, '.')+1:]
		src := msgType
		if strings.HasPrefix(s, SubjectEventPrefix) {
			src = event
		}
		if tok != SubjectUnknown && tok != strings.ToLower(src) {
			t.Fatalf("SubjectFor(%q, %q) = %q: token is not the lower-cased type", msgType, event, s)
		}
	})
}

func FuzzReplyXML(f *testing.F) {
	f.Add("hello", "openid")
	f.Add("]]>", "]]]>")
	f.Add("\x00\xff😀", "\uFFFE")
	f.Fuzz(func(t *testing.T, content, name string) {
		b := TextReply(content).AppendXML(nil, name, "gh", 1)
		var d struct {
			ToUserName string
			Content    string
		}
		if err := xml.Unmarshal(b, &d); err != nil {
			t.Fatalf("reply for %q is not well-formed: %v\n%s", content, err, b)
		}
		if want := xmlVisible(content); d.Content != want {
			t.Fatalf("content %q came back as %q, want %q", content, d.Content, want)
		}
	})
}

// xmlVisible is what an XML reader sees of s after appendCDATA: forbidden
// characters dropped, invalid bytes as U+FFFD, CR and CRLF normalised to LF.
func xmlVisible(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteRune(utf8.RuneError)
		case isXMLChar(r):
			b.WriteRune(r)
		}
	}
	out := strings.ReplaceAll(b.String(), "\r\n", "\n")
	return strings.ReplaceAll(out, "\r", "\n")
}
