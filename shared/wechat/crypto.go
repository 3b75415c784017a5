package wechat

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Errors returned by the safe-mode crypto. Decrypt wraps exactly one of the
// ciphertext errors, so callers can tell what was wrong without parsing text.
var (
	ErrAESKey     = errors.New("EncodingAESKey must be 43 base64 characters decoding to 32 bytes")
	ErrBase64     = errors.New("ciphertext is not valid base64")
	ErrBlockSize  = errors.New("ciphertext is not a non-empty multiple of the AES block size")
	ErrPadding    = errors.New("invalid PKCS#7 padding")
	ErrLength     = errors.New("message length field out of range")
	ErrAppID      = errors.New("AppID in message does not match")
	errNoMaterial = errors.New("no random bytes")
)

const (
	padBlock  = 32 // WeChat pads to 32-byte blocks, not AES's 16.
	randomLen = 16
	lengthLen = 4
)

// Cipher is the safe-mode cipher of one account: AES-256-CBC keyed with the
// decoded EncodingAESKey, IV the key's first 16 bytes, as WeChat specifies.
// A Cipher is safe for concurrent use.
type Cipher struct {
	block  cipher.Block
	iv     []byte
	appID  string
	random io.Reader // crypto/rand; replaced only by tests for the sample vector
}

// NewCipher returns the cipher for an account's EncodingAESKey and AppID.
func NewCipher(encodingAESKey, appID string) (*Cipher, error) {
	if len(encodingAESKey) != 43 {
		return nil, ErrAESKey
	}
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if err != nil || len(key) != 32 {
		return nil, ErrAESKey
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return &Cipher{block: block, iv: key[:aes.BlockSize], appID: appID, random: rand.Reader}, nil
}

// Decrypt opens the base64 Encrypt field of a safe-mode message and returns
// the message XML. It checks the padding, the length field and the AppID.
func (c *Cipher) Decrypt(encrypt string) ([]byte, error) {
	buf := make([]byte, base64.StdEncoding.DecodedLen(len(encrypt)))
	n, err := base64.StdEncoding.Decode(buf, []byte(encrypt))
	if err != nil {
		return nil, ErrBase64
	}
	buf = buf[:n]
	if len(buf) == 0 || len(buf)%aes.BlockSize != 0 {
		return nil, ErrBlockSize
	}
	cipher.NewCBCDecrypter(c.block, c.iv).CryptBlocks(buf, buf)

	pad := int(buf[len(buf)-1])
	if pad < 1 || pad > padBlock || pad > len(buf) {
		return nil, ErrPadding
	}
	for _, b := range buf[len(buf)-pad:] {
		if int(b) != pad {
			return nil, ErrPadding
		}
	}
	plain := buf[:len(buf)-pad]
	if len(plain) < randomLen+lengthLen {
		return nil, ErrLength
	}
	size := binary.BigEndian.Uint32(plain[randomLen:])
	body := plain[randomLen+lengthLen:]
	if uint64(size) > uint64(len(body)) {
		return nil, ErrLength
	}
	if string(body[size:]) != c.appID {
		return nil, ErrAppID
	}
	return body[:size:size], nil
}

// Encrypt seals msg for the account: 16 random bytes, the 4-byte big-endian
// length, msg and the AppID, PKCS#7-padded to 32 bytes, base64-encoded.
func (c *Cipher) Encrypt(msg []byte) (string, error) {
	n := randomLen + lengthLen + len(msg) + len(c.appID)
	pad := padBlock - n%padBlock
	buf := make([]byte, n+pad)
	if _, err := io.ReadFull(c.random, buf[:randomLen]); err != nil {
		return "", fmt.Errorf("encrypt: %w: %w", errNoMaterial, err)
	}
	binary.BigEndian.PutUint32(buf[randomLen:], uint32(len(msg)))
	copy(buf[randomLen+lengthLen:], msg)
	copy(buf[randomLen+lengthLen+len(msg):], c.appID)
	for i := n; i < len(buf); i++ {
		buf[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(c.block, c.iv).CryptBlocks(buf, buf)
	return base64.StdEncoding.EncodeToString(buf), nil
}

// Seal encrypts a reply and wraps it in the signed safe-mode envelope that
// WeChat expects back: Encrypt, MsgSignature, TimeStamp and Nonce.
func (c *Cipher) Seal(token string, reply []byte, timestamp, nonce string) ([]byte, error) {
	enc, err := c.Encrypt(reply)
	if err != nil {
		return nil, err
	}
	return EncryptedReply(enc, Signature(token, timestamp, nonce, enc), timestamp, nonce), nil
}
