// Package wechat implements the WeChat Official Account callback protocol:
// request signatures, safe-mode (AES) message crypto, the message model and
// passive-reply XML, and how a message maps onto the bus (subject, dedup key).
//
// Everything here is pure: no I/O, no globals, safe for concurrent use.
package wechat

import (
	"crypto/sha1"
	"crypto/subtle"
	"encoding/hex"
)

// Signature returns WeChat's signature over parts: the hex SHA-1 of the parts
// sorted lexicographically and concatenated. Plain mode signs (token,
// timestamp, nonce); safe mode's msg_signature adds the Encrypt field.
func Signature(parts ...string) string {
	sum := signatureSum(parts)
	return hex.EncodeToString(sum[:])
}

// VerifySignature reports whether signature is the plain-mode signature of
// the request, in constant time with respect to the expected value.
func VerifySignature(token, timestamp, nonce, signature string) bool {
	return verify(signature, token, timestamp, nonce)
}

// VerifyMsgSignature reports whether msgSignature is the safe-mode signature
// over token, timestamp, nonce and the Encrypt field, in constant time.
func VerifyMsgSignature(token, timestamp, nonce, encrypt, msgSignature string) bool {
	return verify(msgSignature, token, timestamp, nonce, encrypt)
}

func verify(got string, parts ...string) bool {
	var want [sha1.Size]byte
	if len(got) != 2*len(want) {
		return false
	}
	var gotSum [sha1.Size]byte
	if _, err := hex.Decode(gotSum[:], []byte(got)); err != nil {
		return false
	}
	want = signatureSum(parts)
	return subtle.ConstantTimeCompare(gotSum[:], want[:]) == 1
}

// signatureSum sorts and hashes without allocating for the usual sizes:
// signature checks run on every request, before anything else.
func signatureSum(parts []string) [sha1.Size]byte {
	var sorted [4]string
	s := sorted[:0]
	if len(parts) > len(sorted) {
		s = make([]string, 0, len(parts))
	}
	for _, p := range parts {
		// Insertion sort: at most four short strings.
		i := len(s)
		s = append(s, p)
		for ; i > 0 && s[i-1] > p; i-- {
			s[i] = s[i-1]
		}
		s[i] = p
	}
	var buf [512]byte
	b := buf[:0]
	for _, p := range s {
		b = append(b, p...)
	}
	return sha1.Sum(b)
}
