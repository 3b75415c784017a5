package wechat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Sender plays WeChat's side of a callback: it signs (and, with a Cipher,
// encrypts) a message for a wxgate URL and opens the reply. The simulator
// and the tests use it; it follows the same protocol as the server side.
type Sender struct {
	Token  string
	Cipher *Cipher // nil: plain mode
}

// NewRequest returns the POST WeChat would send for msg at time now with
// the given nonce. In safe mode the body is the encrypted envelope and the
// query carries encrypt_type=aes and msg_signature.
func (s Sender) NewRequest(rawURL string, msg []byte, now time.Time, nonce string) (*http.Request, error) {
	u, q, ts, err := s.signedQuery(rawURL, now, nonce)
	if err != nil {
		return nil, err
	}
	body := msg
	if s.Cipher != nil {
		enc, err := s.Cipher.Encrypt(msg)
		if err != nil {
			return nil, err
		}
		to := ""
		if m, err := Parse(msg); err == nil {
			to = m.ToUserName
		}
		q.Set("encrypt_type", "aes")
		q.Set("msg_signature", Signature(s.Token, ts, nonce, enc))
		body = append(cdataElem([]byte("<xml>"), "ToUserName", to), "<Encrypt><![CDATA["+enc+"]]></Encrypt></xml>"...)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/xml")
	return req, nil
}

// NewVerifyRequest returns the GET WeChat sends to check a callback URL.
func (s Sender) NewVerifyRequest(rawURL, echostr string, now time.Time, nonce string) (*http.Request, error) {
	u, q, _, err := s.signedQuery(rawURL, now, nonce)
	if err != nil {
		return nil, err
	}
	q.Set("echostr", echostr)
	u.RawQuery = q.Encode()
	return http.NewRequest(http.MethodGet, u.String(), nil)
}

// signedQuery parses rawURL and adds signature, timestamp and nonce.
func (s Sender) signedQuery(rawURL string, now time.Time, nonce string) (*url.URL, url.Values, string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, "", fmt.Errorf("url: %w", err)
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	q := u.Query()
	q.Set("signature", Signature(s.Token, ts, nonce))
	q.Set("timestamp", ts)
	q.Set("nonce", nonce)
	return u, q, ts, nil
}

// Post sends msg to rawURL as WeChat would and returns the HTTP status and
// the reply, opened (decrypted and checked) when the status is 200.
func (s Sender) Post(c *http.Client, rawURL string, msg []byte, now time.Time, nonce string) (status int, reply []byte, err error) {
	req, err := s.NewRequest(rawURL, msg, now, nonce)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, body, nil
	}
	reply, err = s.OpenReply(body)
	return resp.StatusCode, reply, err
}

// ErrReplySignature means a safe-mode reply's MsgSignature did not verify.
var ErrReplySignature = errors.New("reply MsgSignature does not verify")

// OpenReply returns the reply XML from a response body: as is in plain
// mode; in safe mode after checking MsgSignature and decrypting. "success"
// and the empty body are returned as they are.
func (s Sender) OpenReply(body []byte) ([]byte, error) {
	if s.Cipher == nil || len(body) == 0 || string(body) == "success" {
		return body, nil
	}
	env, err := Parse(body)
	if err != nil {
		return nil, fmt.Errorf("reply envelope: %w", err)
	}
	sig, _ := env.Field("MsgSignature")
	ts, _ := env.Field("TimeStamp")
	nonce, _ := env.Field("Nonce")
	if !VerifyMsgSignature(s.Token, ts, nonce, env.Encrypt, sig) {
		return nil, ErrReplySignature
	}
	plain, err := s.Cipher.Decrypt(env.Encrypt)
	if err != nil {
		return nil, fmt.Errorf("reply: %w", err)
	}
	return plain, nil
}
