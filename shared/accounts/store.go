package accounts

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Bucket is the KV bucket of the accounts kept as data, one value per
// account under its id.
const Bucket = "wxgate_accounts"

// record is an account as stored: its secrets sealed.
type record struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	AppID      string    `json:"appid"`
	OriginalID string    `json:"original_id"`
	Mode       string    `json:"mode"`
	Sealed     string    `json:"sealed"` // the secrets, AES-GCM with ACCOUNTS_SECRET_KEY
	Created    time.Time `json:"created_at"`
	Updated    time.Time `json:"updated_at"`
}

// ErrExists means an account with the id exists already.
var ErrExists = errors.New("an account with this id exists")

func (s *Sealer) encode(a *Account, created time.Time) ([]byte, error) {
	sealed, err := s.seal(a)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	if created.IsZero() {
		created = now
	}
	return json.Marshal(record{ID: a.ID, Name: a.Name, AppID: a.AppID, OriginalID: a.OriginalID, Mode: a.Mode,
		Sealed: sealed, Created: created, Updated: now})
}

// decode reads a stored value; the secrets stay unopened (and the error
// says so) when s cannot open them.
func (s *Sealer) decode(key string, b []byte) (*Account, time.Time, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.ID != key || !ValidID(r.ID) {
		return nil, time.Time{}, fmt.Errorf("account %q: unreadable value", key)
	}
	a := &Account{ID: r.ID, Name: r.Name, AppID: r.AppID, OriginalID: r.OriginalID, Mode: r.Mode}
	return a, r.Created, s.open(a, r.Sealed)
}
