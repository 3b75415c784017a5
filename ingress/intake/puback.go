package intake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// pubAck is JetStream's answer to a publish: where the message is, and
// whether the stream had it already.
type pubAck struct {
	Seq       uint64
	Duplicate bool
}

// store publishes msg to the stream and waits up to timeout for its
// acknowledgement. It is jetstream.PublishMsg's protocol as a core
// request: every callback pays for this publish, and the jetstream client's
// context and encoding/json for a three-field answer were a fifth of it.
func (in *Intake) store(msg *nats.Msg, timeout time.Duration) (pubAck, error) {
	resp, err := in.o.Conn.RequestMsg(msg, timeout)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			// No stream listens on the subject: as jetstream reports it.
			return pubAck{}, jetstream.ErrNoStreamResponse
		}
		return pubAck{}, err
	}
	return parsePubAck(resp.Data)
}

var (
	seqField       = []byte(`"seq":`)
	duplicateField = []byte(`"duplicate":`)
	errorField     = []byte(`"error"`)
)

// parsePubAck reads {"stream":"WXGATE_EVENTS","seq":42} and the server's
// duplicate form, {"stream":"WXGATE_EVENTS","seq":42,"duplicate": true},
// by hand; an error, or anything it does not recognise, goes through
// encoding/json.
func parsePubAck(data []byte) (pubAck, error) {
	if len(data) > 2 && data[0] == '{' && !bytes.Contains(data, errorField) {
		if digits, ok := after(data, seqField); ok {
			n := 0
			for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
				n++
			}
			rest := bytes.TrimLeft(digits[n:], " ")
			if n > 0 && len(rest) > 0 && (rest[0] == ',' || rest[0] == '}') {
				if seq, err := strconv.ParseUint(string(digits[:n]), 10, 64); err == nil && seq > 0 {
					dup, ok := after(data, duplicateField)
					switch {
					case !ok:
						return pubAck{Seq: seq}, nil
					case bytes.HasPrefix(dup, []byte("true")):
						return pubAck{Seq: seq, Duplicate: true}, nil
					case bytes.HasPrefix(dup, []byte("false")):
						return pubAck{Seq: seq}, nil
					}
				}
			}
		}
	}
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return pubAck{}, fmt.Errorf("publish acknowledgement %q: %w", data, err)
	}
	if r.Error != nil {
		return pubAck{}, r.Error
	}
	if r.Seq == 0 {
		return pubAck{}, fmt.Errorf("publish acknowledgement %q: no sequence", data)
	}
	return pubAck{Seq: r.Seq, Duplicate: r.Duplicate}, nil
}

// after returns what follows field in data, spaces skipped.
func after(data, field []byte) ([]byte, bool) {
	i := bytes.Index(data, field)
	if i < 0 {
		return nil, false
	}
	return bytes.TrimLeft(data[i+len(field):], " "), true
}
