// Package statstest counts scene events the slow and obvious way, to check
// the analytics' counts against: every figure is recomputed from the list
// of events, with no state, no gap histogram and no trace.
package statstest

import (
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

// Event is one scene event as a test sent it.
type Event struct {
	Account string
	Kind    string // subscribe, scan or unsubscribe
	Scene   string // of a subscribe or scan
	Person  string
	At      time.Time
}

// Model holds the events in stream order.
type Model struct {
	Zone *time.Location
	// Group is a scene's group (static for the whole run); nil: "".
	Group  func(account, scene string) string
	Events []Event
	byUni  map[uni][]counted
}

type uni struct{ account, uid string }

// counted is an event as it counts in one universe.
type counted struct {
	date         stats.Date
	hour         int
	person       string
	sub, scan    bool
	unfollow     bool
	seq          int
	scene, group string
}

func (m *Model) group(account, scene string) string {
	if m.Group == nil {
		return ""
	}
	return m.Group(account, scene)
}

// index places each event in its universes: its scene, its scene's group
// and its account; an unfollow in those of the scene the person last
// followed through, in stream order.
func (m *Model) index() {
	if m.byUni != nil {
		return
	}
	m.byUni = map[uni][]counted{}
	follows := map[[2]string]string{} // (account, person) → scene
	for i, e := range m.Events {
		date, hour := stats.DateHour(e.At, m.Zone)
		c := counted{date: date, hour: hour, person: e.Person, seq: i}
		scene := e.Scene
		switch e.Kind {
		case "subscribe":
			c.sub = true
			follows[[2]string{e.Account, e.Person}] = e.Scene
		case "scan":
			c.scan = true
		case "unsubscribe":
			s, ok := follows[[2]string{e.Account, e.Person}]
			if !ok {
				continue
			}
			delete(follows, [2]string{e.Account, e.Person})
			c.unfollow, scene = true, s
		default:
			continue
		}
		g := m.group(e.Account, scene)
		for _, uid := range []string{stats.SceneUID(scene), stats.GroupUID(g), stats.AccountUID} {
			k := uni{e.Account, uid}
			m.byUni[k] = append(m.byUni[k], c)
		}
	}
}

// Period is universe uid's counts on the days from..to.
func (m *Model) Period(account, uid string, from, to stats.Date) stats.Counts {
	return m.count(account, uid, func(c counted) bool { return c.date >= from && c.date <= to })
}

// Hour is universe uid's counts in one hour of one day.
func (m *Model) Hour(account, uid string, date stats.Date, hour int) stats.Counts {
	return m.count(account, uid, func(c counted) bool { return c.date == date && c.hour == hour })
}

// All is universe uid's counts over every event.
func (m *Model) All(account, uid string) stats.Counts {
	return m.count(account, uid, func(counted) bool { return true })
}

func (m *Model) count(account, uid string, in func(counted) bool) stats.Counts {
	m.index()
	var c stats.Counts
	people := map[string]bool{}
	for _, e := range m.byUni[uni{account, uid}] {
		if !in(e) {
			continue
		}
		switch {
		case e.sub:
			c.SubscribeScans++
		case e.scan:
			c.ScanScans++
		case e.unfollow:
			c.Unfollows++
		}
		if (e.sub || e.scan) && !people[e.person] {
			people[e.person] = true
			c.UniquePeople++
		}
	}
	c.Scans, c.NewFollowers = c.SubscribeScans+c.ScanScans, c.SubscribeScans
	c.NetFollowers = c.NewFollowers - c.Unfollows
	return c
}

// Scenes are the scenes of account with any scan, and Groups the groups
// with any event.
func (m *Model) Scenes(account string) []string {
	m.index()
	var out []string
	seen := map[string]bool{}
	for _, e := range m.Events {
		if e.Account == account && e.Scene != "" && !seen[e.Scene] {
			seen[e.Scene] = true
			out = append(out, e.Scene)
		}
	}
	return out
}
