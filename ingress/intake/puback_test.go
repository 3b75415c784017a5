package intake

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func TestParsePubAck(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want pubAck
		err  error // errors.Is target; nil for success
		bad  bool  // any error
	}{
		{"stored", `{"stream":"WXGATE_EVENTS","seq":42}`, pubAck{Seq: 42}, nil, false},
		{"duplicate", `{"stream":"WXGATE_EVENTS","seq":42,"duplicate":true}`, pubAck{Seq: 42, Duplicate: true}, nil, false},
		{"domain", `{"stream":"WXGATE_EVENTS","domain":"hub","seq":7}`, pubAck{Seq: 7}, nil, false},
		{"spaces", `{ "stream": "WXGATE_EVENTS", "seq": 9, "duplicate": true }`, pubAck{Seq: 9, Duplicate: true}, nil, false},
		{"not found", `{"error":{"code":404,"err_code":10059,"description":"stream not found"}}`, pubAck{}, jetstream.ErrStreamNotFound, false},
		{"other error", `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, pubAck{}, nil, true},
		{"no sequence", `{"stream":"WXGATE_EVENTS"}`, pubAck{}, nil, true},
		{"not json", `+OK`, pubAck{}, nil, true},
		{"empty", ``, pubAck{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePubAck([]byte(tc.in))
			switch {
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("err = %v, want %v", err, tc.err)
			case tc.bad && err == nil:
				t.Fatalf("= %+v, want an error", got)
			case tc.err == nil && !tc.bad && err != nil:
				t.Fatalf("err = %v", err)
			}
			if got != tc.want {
				t.Errorf("= %+v, want %+v", got, tc.want)
			}
		})
	}
}
