package accounts

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrNoSecretKey means ACCOUNTS_SECRET_KEY is not set: accounts can be
// listed, not created or changed (their secrets could not be sealed).
var ErrNoSecretKey = errors.New("ACCOUNTS_SECRET_KEY is not set: accounts cannot be created or changed (set it to 32 random bytes, base64: openssl rand -base64 32)")

// ErrSealed means a stored account's secrets cannot be opened with this
// process's ACCOUNTS_SECRET_KEY (another key sealed them, or none is set).
var ErrSealed = errors.New("the account's secrets were sealed with another ACCOUNTS_SECRET_KEY")

// Sealer seals and opens an account's secrets with AES-256-GCM, keyed by
// ACCOUNTS_SECRET_KEY. The account id is the additional data: a sealed
// blob copied to another account does not open.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer reads ACCOUNTS_SECRET_KEY (32 bytes, base64). The key is never
// echoed in the error.
func NewSealer(key string) (*Sealer, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(key))
	if err != nil {
		raw, err = base64.RawStdEncoding.DecodeString(strings.TrimSpace(key))
	}
	if err != nil || len(raw) != 32 {
		return nil, errors.New("ACCOUNTS_SECRET_KEY: want 32 random bytes in base64 (openssl rand -base64 32)")
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("ACCOUNTS_SECRET_KEY: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("ACCOUNTS_SECRET_KEY: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// secrets is what is sealed.
type secrets struct {
	Token          string `json:"token,omitempty"`
	EncodingAESKey string `json:"aes,omitempty"`
	Previous       string `json:"aes_prev,omitempty"`
	AppSecret      string `json:"appsecret,omitempty"`
}

func (s *Sealer) seal(a *Account) (string, error) {
	plain, err := json.Marshal(secrets{Token: a.Token, EncodingAESKey: a.EncodingAESKey, Previous: a.PreviousEncodingAESKey, AppSecret: a.AppSecret})
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	return base64.StdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(a.ID))), nil
}

func (s *Sealer) open(a *Account, sealed string) error {
	if s == nil {
		return ErrSealed
	}
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(b) < s.aead.NonceSize() {
		return ErrSealed
	}
	plain, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], []byte(a.ID))
	if err != nil {
		return ErrSealed
	}
	var sec secrets
	if err := json.Unmarshal(plain, &sec); err != nil {
		return ErrSealed
	}
	a.Token, a.EncodingAESKey, a.PreviousEncodingAESKey, a.AppSecret = sec.Token, sec.EncodingAESKey, sec.Previous, sec.AppSecret
	return nil
}
