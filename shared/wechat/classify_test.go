package wechat

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type hdr struct {
	to, from                         string
	createTime                       int64
	msgType, msgID, event, key, encr string
}

// header is what Classify promises to agree with Parse on.
func header(m *Message) hdr {
	return hdr{m.ToUserName, m.FromUserName, m.CreateTime, m.MsgType, m.MsgID, m.Event, m.EventKey, m.Encrypt}
}

func TestClassifySamples(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.xml"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m Message
		ok := Classify(data, &m)
		nested := strings.Contains(f, "scancode_push")
		if ok == nested {
			t.Errorf("%s: Classify ok=%v; want the fast path for flat messages only", f, ok)
			continue
		}
		if !ok {
			continue
		}
		full, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		if header(full) != header(&m) || m.Subject() != full.Subject() || m.DedupKey(DefaultAccount, data) != full.DedupKey(DefaultAccount, data) {
			t.Errorf("%s: Classify = %+v\nParse    = %+v", f, m, header(full))
		}
	}
}

func TestClassifyFallsBack(t *testing.T) {
	for name, in := range map[string]string{
		"prolog":       `<?xml version="1.0"?><xml><MsgType>text</MsgType></xml>`,
		"attribute":    `<xml><MsgType a="1">text</MsgType></xml>`,
		"entity":       `<xml><MsgType>te&amp;xt</MsgType></xml>`,
		"nested":       `<xml><A><B>1</B></A></xml>`,
		"mismatched":   `<xml><MsgType>text</Event></xml>`,
		"unclosed":     `<xml><MsgType>text</MsgType>`,
		"self-closing": `<xml><EventKey/></xml>`,
		"cr":           "<xml><EventKey>a\rb</EventKey></xml>",
		"comment":      `<xml><!-- c --><MsgType>text</MsgType></xml>`,
		"wrong root":   `<root><MsgType>text</MsgType></root>`,
		"mixed":        `<xml><Content>a<![CDATA[b]]></Content></xml>`,
		"bad utf8":     "<xml><Content>\xff</Content></xml>",
		"nul":          "<xml><Content>\x00</Content></xml>",
	} {
		var m Message
		if Classify([]byte(in), &m) {
			t.Errorf("%s: Classify accepted %q", name, in)
		}
	}
}

func FuzzClassify(f *testing.F) {
	addSamples(f)
	f.Add([]byte("<xml><MsgType> <![CDATA[event]]> </MsgType><Event>\tSCAN\n</Event><EventKey><![CDATA[a]]]]></EventKey></xml>"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		if !Classify(data, &m) {
			return
		}
		full, err := parseXML(data)
		if err != nil {
			t.Fatalf("Classify accepted what encoding/xml refuses (%v): %q", err, data)
		}
		if header(full) != header(&m) {
			t.Fatalf("disagree on %q:\nClassify %+v\nParse    %+v", data, m, header(full))
		}
	})
}

// The fast path of Parse gives exactly what encoding/xml gives, on every
// input it takes.
func FuzzParseFast(f *testing.F) {
	addSamples(f)
	f.Add([]byte("<xml><Content> <![CDATA[ a ]]> </Content><Content>x</Content></xml>"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast Message
		if !parseFlat(data, &fast, false) {
			return
		}
		slow, err := parseXML(data)
		if err != nil {
			t.Fatalf("fast path accepted what encoding/xml refuses (%v): %q", err, data)
		}
		if len(fast.Fields) == 0 && len(slow.Fields) == 0 {
			fast.Fields, slow.Fields = nil, nil // no elements: nil and empty are the same
		}
		if !reflect.DeepEqual(&fast, slow) {
			t.Fatalf("disagree on %q:\nfast %+v\nxml  %+v", data, fast, *slow)
		}
	})
}
