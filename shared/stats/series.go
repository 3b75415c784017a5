package stats

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Date is a local calendar day in the analytics' time zone
// (ANALYTICS_TIME_ZONE): days since 1970-01-01.
type Date int32

// DateOf is the date of a calendar day.
func DateOf(y int, m time.Month, d int) Date {
	// Days from the civil calendar (H. Hinnant's days_from_civil).
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (int(m) + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return Date(era*146097 + doe - 719468)
}

// Civil is the calendar day of d.
func (d Date) Civil() (y int, m time.Month, day int) {
	z := int(d) + 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era--
	}
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day = doy - (153*mp+2)/5 + 1
	m = time.Month((mp+2)%12 + 1)
	y = yoe + era*400
	if m <= 2 {
		y++
	}
	return y, m, day
}

// String is the date as the API writes it: 2006-01-02.
func (d Date) String() string {
	y, m, day := d.Civil()
	return fmt.Sprintf("%04d-%02d-%02d", y, m, day)
}

// key is the date in a KV key: 20060102.
func (d Date) key() string {
	y, m, day := d.Civil()
	return fmt.Sprintf("%04d%02d%02d", y, m, day)
}

// ParseDate reads a date as the API takes it: YYYY-MM-DD.
func ParseDate(s string) (Date, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil || len(s) != len(time.DateOnly) {
		return 0, fmt.Errorf("%q is not a date (YYYY-MM-DD)", s)
	}
	return DateOf(t.Date()), nil
}

// Start is when d begins in loc.
func (d Date) Start(loc *time.Location) time.Time {
	y, m, day := d.Civil()
	return time.Date(y, m, day, 0, 0, 0, 0, loc)
}

// Hours is how many hours d has in loc: 24, or 23 and 25 on the days
// daylight saving time starts and ends.
func (d Date) Hours(loc *time.Location) int {
	n := (d + 1).Start(loc).Sub(d.Start(loc))
	return max(1, int((n+time.Hour-1)/time.Hour))
}

// MaxHours is the most hours a day can have (the day daylight saving time
// ends).
const MaxHours = 25

// DateHour is the local date of t in loc, and its hour: whole hours since
// the day began (so a day of 25 hours has an hour 24).
func DateHour(t time.Time, loc *time.Location) (Date, int) {
	d := DateOf(t.In(loc).Date())
	h := int(t.Sub(d.Start(loc)) / time.Hour)
	return d, min(max(h, 0), d.Hours(loc)-1)
}

// Universe ids: what a day or hour value counts. A person is counted once
// per universe: in a scene, in a group (its scenes together), in the
// account (all its scenes).
const AccountUID = "a"

// SceneUID is the universe id of a scene.
func SceneUID(scene string) string { return "s" + b64(scene) }

// GroupUID is the universe id of a group ("" is the scenes without a code).
func GroupUID(group string) string { return "g" + b64(group) }

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func b64Decode(s string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return string(b), err
}

// DayKey is the key of a universe's day value in the series bucket. Only
// an accounts.ValidID account may reach it.
func DayKey(account string, d Date, uid string) string {
	return "d." + account + "." + d.key() + "." + uid
}

// HourKey is the key of a universe's hour values for one day (scenes and
// the account only).
func HourKey(account string, d Date, uid string) string {
	return "h." + account + "." + d.key() + "." + uid
}

// Day is a universe's counts on one local day, as stored. Unique people
// are kept as a histogram of gaps: each person who scanned that day is one
// occurrence, with the days since their previous scan in the universe (0:
// none before). The distinct people of any period are then the period's
// occurrences whose previous scan is before the period's first day (see
// Sum): exact, without keeping who scanned when.
type Day struct {
	Epoch, Seq uint64 // the point of the event stream it was written at
	Subscribe  int64  // scans by people not yet following: new followers
	Scan       int64  // scans by followers
	Unfollows  int64  // of people who followed through the scene (group, account)
	Gaps       []Gap  // by Days, ascending; no zero N
	rev        uint64 // the KV revision it was read at, in a view
}

// Gap is how many of a day's people last scanned the universe Days days
// before (0: never).
type Gap struct {
	Days uint32
	N    int64
}

// AddGap adds n occurrences with gap days.
func (d *Day) AddGap(days uint32, n int64) {
	i, found := slices.BinarySearchFunc(d.Gaps, days, func(g Gap, days uint32) int { return int(g.Days) - int(days) })
	switch {
	case !found:
		d.Gaps = slices.Insert(d.Gaps, i, Gap{days, n})
	case d.Gaps[i].N+n == 0:
		d.Gaps = slices.Delete(d.Gaps, i, i+1)
	default:
		d.Gaps[i].N += n
	}
}

// Unique is the day's distinct people.
func (d *Day) Unique() int64 { return d.UniqueSince(0) }

// UniqueSince is how many of the day's people had not scanned the
// universe in the k days before it (k = 0: all of them).
func (d *Day) UniqueSince(k int) int64 {
	var n int64
	for _, g := range d.Gaps {
		if g.Days == 0 || int64(g.Days) > int64(k) {
			n += g.N
		}
	}
	return n
}

// Hours are a universe's counts per hour of one local day, as stored.
type Hours struct {
	Epoch, Seq uint64
	H          []Hour // by hour of the day
}

// Hour is one hour's counts; Unique is its distinct people.
type Hour struct{ Subscribe, Scan, Unique, Unfollows int64 }

// At is hour h, grown as needed.
func (h *Hours) At(i int) *Hour {
	for len(h.H) <= i {
		h.H = append(h.H, Hour{})
	}
	return &h.H[i]
}

// Counts are a universe's counts over a point or a period.
type Counts struct {
	Scans          int64 `json:"scans"`           // subscribe + scan
	SubscribeScans int64 `json:"subscribe_scans"` // scans by people not yet following
	ScanScans      int64 `json:"scan_scans"`      // scans by followers
	NewFollowers   int64 `json:"new_followers"`   // follows through the scene
	UniquePeople   int64 `json:"unique_people"`   // distinct people who scanned
	Unfollows      int64 `json:"unfollows"`       // of people who followed through it
	NetFollowers   int64 `json:"net_followers"`   // new followers − unfollows
}

func counts(subscribe, scan, unique, unfollows int64) Counts {
	return Counts{Scans: subscribe + scan, SubscribeScans: subscribe, ScanScans: scan, NewFollowers: subscribe,
		UniquePeople: unique, Unfollows: unfollows, NetFollowers: subscribe - unfollows}
}

// Counts are the day's counts.
func (d *Day) Counts() Counts { return counts(d.Subscribe, d.Scan, d.Unique(), d.Unfollows) }

// Counts are the hour's counts.
func (h Hour) Counts() Counts { return counts(h.Subscribe, h.Scan, h.Unique, h.Unfollows) }

// Sum is a universe's counts over the days from..to, given each day's
// value (nil: no scans that day). Unique people are exact: a person is
// counted on their first day in the period, the one whose previous scan
// is before from.
func Sum(from, to Date, day func(Date) *Day) Counts {
	var sub, scan, unique, unf int64
	for d := from; d <= to; d++ {
		v := day(d)
		if v == nil {
			continue
		}
		sub, scan, unf = sub+v.Subscribe, scan+v.Scan, unf+v.Unfollows
		unique += v.UniqueSince(int(d - from))
	}
	return counts(sub, scan, unique, unf)
}

// The binary formats of the series values: a format number, then
// varints. Small, because there is one value per universe and day.
const (
	dayFormat  = 1
	hourFormat = 1
)

var errValue = errors.New("series value unreadable")

// Append appends the stored form of d.
func (d *Day) Append(b []byte) []byte {
	b = append(b, dayFormat)
	b = binary.AppendUvarint(b, d.Epoch)
	b = binary.AppendUvarint(b, d.Seq)
	b = binary.AppendVarint(b, d.Subscribe)
	b = binary.AppendVarint(b, d.Scan)
	b = binary.AppendVarint(b, d.Unfollows)
	b = binary.AppendUvarint(b, uint64(len(d.Gaps)))
	last := uint32(0)
	for _, g := range d.Gaps {
		b = binary.AppendUvarint(b, uint64(g.Days-last))
		b = binary.AppendVarint(b, g.N)
		last = g.Days
	}
	return b
}

// DecodeDay reads a stored day value.
func DecodeDay(b []byte) (*Day, error) {
	r := Reader{B: b, Kind: errValue}
	if r.Byte() != dayFormat {
		return nil, fmt.Errorf("%w: day format", errValue)
	}
	d := &Day{Epoch: r.Uvarint(), Seq: r.Uvarint(), Subscribe: r.Varint(), Scan: r.Varint(), Unfollows: r.Varint()}
	n := r.Count(2)
	d.Gaps = make([]Gap, 0, n)
	last := uint64(0)
	for i := 0; i < n && r.Err == nil; i++ {
		last += r.Uvarint()
		if last > 1<<31 || (i > 0 && last == uint64(d.Gaps[i-1].Days)) {
			r.Fail("gaps out of order")
		}
		d.Gaps = append(d.Gaps, Gap{uint32(last), r.Varint()})
	}
	return d, r.Done()
}

// Append appends the stored form of h: by column (new followers, scans
// by followers, repeated people, unfollows), each the mask of the hours
// where it is not zero and their values. Most hours' repeats are zero
// (unique people = scans), and most hours have one kind of scan.
func (h *Hours) Append(b []byte) []byte {
	b = append(b, hourFormat)
	b = binary.AppendUvarint(b, h.Epoch)
	b = binary.AppendUvarint(b, h.Seq)
	for _, col := range hourColumns {
		var mask uint64
		for i, v := range h.H {
			if col.get(v) != 0 {
				mask |= 1 << i
			}
		}
		b = binary.AppendUvarint(b, mask)
		for i, v := range h.H {
			if mask&(1<<i) != 0 {
				b = binary.AppendVarint(b, col.get(v))
			}
		}
	}
	return b
}

// hourColumns are how an hour is stored: its counts, less what the others
// imply.
var hourColumns = []struct {
	get func(Hour) int64
	set func(*Hour, int64)
}{
	{func(h Hour) int64 { return h.Subscribe }, func(h *Hour, n int64) { h.Subscribe = n }},
	{func(h Hour) int64 { return h.Scan }, func(h *Hour, n int64) { h.Scan = n }},
	{func(h Hour) int64 { return h.Subscribe + h.Scan - h.Unique }, func(h *Hour, n int64) { h.Unique = h.Subscribe + h.Scan - n }},
	{func(h Hour) int64 { return h.Unfollows }, func(h *Hour, n int64) { h.Unfollows = n }},
}

// DecodeHours reads a stored hour value.
func DecodeHours(b []byte) (*Hours, error) {
	r := Reader{B: b, Kind: errValue}
	if r.Byte() != hourFormat {
		return nil, fmt.Errorf("%w: hour format", errValue)
	}
	h := &Hours{Epoch: r.Uvarint(), Seq: r.Uvarint()}
	for _, col := range hourColumns {
		mask := r.Uvarint()
		if mask >= 1<<MaxHours {
			r.Fail("hour out of range")
		}
		for i := 0; (mask>>i != 0 || i < len(h.H)) && r.Err == nil; i++ {
			v := h.At(i)
			if mask&(1<<i) != 0 {
				col.set(v, r.Varint())
			} else {
				col.set(v, 0)
			}
		}
	}
	for len(h.H) > 0 && h.H[len(h.H)-1] == (Hour{}) { // as written: no trailing empty hours
		h.H = h.H[:len(h.H)-1]
	}
	return h, r.Done()
}

// Reader reads a binary value, remembering the first error, which wraps
// Kind: the series values here, the analytics' snapshot.
type Reader struct {
	B    []byte
	Kind error
	Err  error
}

func (r *Reader) Fail(what string) {
	if r.Err == nil {
		r.Err = fmt.Errorf("%w: %s", r.Kind, what)
	}
	r.B = nil
}

// Done is the first error, or one for bytes left unread.
func (r *Reader) Done() error {
	if r.Err == nil && len(r.B) != 0 {
		r.Fail("trailing bytes")
	}
	return r.Err
}

func (r *Reader) Byte() byte {
	if len(r.B) == 0 {
		r.Fail("short")
		return 0
	}
	c := r.B[0]
	r.B = r.B[1:]
	return c
}

func (r *Reader) Uvarint() uint64 {
	v, n := binary.Uvarint(r.B)
	if n <= 0 {
		r.Fail("bad number")
		return 0
	}
	r.B = r.B[n:]
	return v
}

func (r *Reader) Varint() int64 {
	v, n := binary.Varint(r.B)
	if n <= 0 {
		r.Fail("bad number")
		return 0
	}
	r.B = r.B[n:]
	return v
}

func (r *Reader) Bytes(n int) []byte {
	if r.Err != nil || n > len(r.B) {
		r.Fail("short")
		return nil
	}
	b := r.B[:n]
	r.B = r.B[n:]
	return b
}

// Count reads a length whose items take at least min bytes each: a count
// the remaining bytes cannot hold is refused before anything is allocated.
func (r *Reader) Count(min int) int {
	n := r.Uvarint()
	if r.Err == nil && n > uint64(len(r.B)/min) {
		r.Fail("count beyond the data")
		return 0
	}
	return int(n)
}
