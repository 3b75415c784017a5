package wechat

import (
	"testing"
)

// go test -run '^$' -bench . -benchmem ./shared/wechat

func BenchmarkVerifySignature(b *testing.B) {
	sig := Signature(sampleToken, sampleTimestamp, sampleNonce)
	b.ReportAllocs()
	for b.Loop() {
		if !VerifySignature(sampleToken, sampleTimestamp, sampleNonce, sig) {
			b.Fatal("bad")
		}
	}
}

func BenchmarkVerifyMsgSignatureAndDecrypt(b *testing.B) {
	c, _ := NewCipher(sampleAESKey, sampleAppID)
	b.ReportAllocs()
	for b.Loop() {
		if !VerifyMsgSignature(sampleToken, sampleTimestamp, sampleNonce, sampleEncrypt, sampleMsgSign) {
			b.Fatal("bad signature")
		}
		if _, err := c.Decrypt(sampleEncrypt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSealReply(b *testing.B) {
	c, _ := NewCipher(sampleAESKey, sampleAppID)
	reply := TextReply("您扫描的场景值为：poster_a").AppendXML(nil, "oia2TjjewbmiOUlr6X-1crbLOvLw", "gh_7f083739789a", 1700000000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Seal(sampleToken, reply, "1700000000", "n0nce"); err != nil {
			b.Fatal(err)
		}
	}
}

// Classifying a message: the subject and the dedup key, by the fast path
// and by the full parse it falls back to.
func BenchmarkClassify(b *testing.B) {
	for _, name := range []string{"text", "scan", "subscribe_scene"} {
		data := readSample(b, name)
		b.Run(name+"/fast", func(b *testing.B) {
			b.ReportAllocs()
			var m Message
			for b.Loop() {
				if !Classify(data, &m) {
					b.Fatal("not classified")
				}
				_, _ = m.Subject(), m.DedupKey(DefaultAccount, m.AppendXML(nil))
			}
		})
		b.Run(name+"/parse", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, err := Parse(data)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = m.Subject(), m.DedupKey(DefaultAccount, m.AppendXML(nil))
			}
		})
	}
}

func BenchmarkReplyXML(b *testing.B) {
	r := TextReply("感谢您的关注！场景值:poster_a")
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.AppendXML(buf[:0], "oia2TjjewbmiOUlr6X-1crbLOvLw", "gh_7f083739789a", 1700000000)
	}
}
