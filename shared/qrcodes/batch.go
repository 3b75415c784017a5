package qrcodes

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// MaxBatch is the most codes one POST /api/qrcodes/batch makes.
const MaxBatch = 1000

// batchCalls bounds the calls to WeChat one batch has in flight: a
// thousand codes at once would meet WeChat's per-minute limits and hold
// the other admin requests up.
const batchCalls = 4

// maxBatchBody bounds a batch body: 1000 codes of a long label each.
const maxBatchBody = 2 << 20

// Result is one code's outcome in a batch: the status its own POST
// /api/qrcodes would have had, and its error.
type Result struct {
	Scene  string `json:"scene"`
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

// item is one code of a batch: its request, or why it is not one.
type item struct {
	scene string
	req   Request
	err   error
}

// csvColumns are a CSV batch's columns: scene, and any of the others, in
// any order.
var csvColumns = []string{"scene", "label", "group", "permanent", "expire_seconds"}

// ParseBatch reads a batch: JSON {"codes":[…as POST /api/qrcodes…]}, or
// with contentType text/csv a CSV with a header row (UTF-8, with or
// without a BOM). Each code is checked as a POST /api/qrcodes body is; a
// bad one is an item with its error, the others stand. An error is the
// whole body's (400).
func ParseBatch(r io.Reader, contentType string) ([]item, error) {
	b, err := readBody(r, maxBatchBody)
	if err != nil {
		return nil, err
	}
	var items []item
	if mt, _, _ := mime.ParseMediaType(contentType); mt == "text/csv" {
		items, err = parseCSV(bytes.TrimPrefix(b, []byte("\uFEFF")))
	} else {
		items, err = parseJSONBatch(b)
	}
	switch {
	case err != nil:
		return nil, err
	case len(items) == 0:
		return nil, fmt.Errorf("%w: the batch has no codes", ErrBadRequest)
	case len(items) > MaxBatch:
		return nil, fmt.Errorf("%w: the batch has %d codes; at most %d a request", ErrBadRequest, len(items), MaxBatch)
	}
	return items, nil
}

func parseJSONBatch(b []byte) ([]item, error) {
	var in struct {
		Codes []json.RawMessage `json:"codes"`
	}
	if admin.DecodeJSON(bytes.NewReader(b), &in) != nil {
		return nil, fmt.Errorf("%w: want one JSON object {\"codes\":[…]} or a CSV body with Content-Type: text/csv", ErrBadRequest)
	}
	items := make([]item, len(in.Codes))
	for i, raw := range in.Codes {
		items[i] = newItem(fmt.Sprintf("codes[%d]", i), raw)
	}
	return items, nil
}

// newItem checks one code as POST /api/qrcodes does; where names it in an
// error.
func newItem(where string, body []byte) item {
	req, err := ParseRequest(bytes.NewReader(body))
	if err != nil {
		var sc struct{ Scene any }
		_ = json.Unmarshal(body, &sc)
		s, _ := sc.Scene.(string)
		return item{scene: s, err: fmt.Errorf("%w: %s: %s", ErrBadRequest, where, strings.TrimPrefix(err.Error(), ErrBadRequest.Error()+": "))}
	}
	return item{scene: req.Scene, req: req}
}

func parseCSV(b []byte) ([]item, error) {
	rd := csv.NewReader(bytes.NewReader(b))
	rd.FieldsPerRecord = -1 // a short row is that row's error, not the batch's
	header, err := rd.Read()
	if err != nil {
		return nil, fmt.Errorf("%w: CSV: want a header row (%s): %v", ErrBadRequest, strings.Join(csvColumns, ","), err)
	}
	at := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		switch {
		case !slices.Contains(csvColumns, h):
			return nil, fmt.Errorf("%w: CSV: unknown column %q (the columns are %s)", ErrBadRequest, h, strings.Join(csvColumns, ","))
		case at[h] != 0:
			return nil, fmt.Errorf("%w: CSV: column %q given twice", ErrBadRequest, h)
		}
		at[h] = i + 1
	}
	if at["scene"] == 0 {
		return nil, fmt.Errorf("%w: CSV: the header has no scene column", ErrBadRequest)
	}
	var items []item
	for {
		rec, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return items, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: CSV: %v", ErrBadRequest, err)
		}
		line, _ := rd.FieldPos(0)
		where := fmt.Sprintf("line %d", line)
		if len(items) == MaxBatch {
			return nil, fmt.Errorf("%w: the batch has more than %d codes; at most %d a request", ErrBadRequest, MaxBatch, MaxBatch)
		}
		if len(rec) != len(header) {
			items = append(items, item{scene: rec[0], err: fmt.Errorf("%w: %s: %d fields, the header has %d", ErrBadRequest, where, len(rec), len(header))})
			continue
		}
		items = append(items, csvItem(where, rec, at))
	}
}

// csvItem is one CSV row, checked as the JSON of the same code.
func csvItem(where string, rec []string, at map[string]int) item {
	field := func(name string) (string, bool) {
		if at[name] == 0 {
			return "", false
		}
		return rec[at[name]-1], true
	}
	scene, _ := field("scene")
	obj := map[string]any{"scene": scene}
	for _, name := range []string{"label", "group"} {
		if v, ok := field(name); ok {
			obj[name] = v
		}
	}
	if v, _ := field("permanent"); strings.TrimSpace(v) != "" {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "1", "yes", "y":
			obj["permanent"] = true
		case "false", "0", "no", "n":
			obj["permanent"] = false
		default:
			return item{scene: scene, err: fmt.Errorf("%w: %s: permanent must be true or false, not %q", ErrBadRequest, where, v)}
		}
	}
	if v, _ := field("expire_seconds"); strings.TrimSpace(v) != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return item{scene: scene, err: fmt.Errorf("%w: %s: expire_seconds must be a whole number of seconds, not %q", ErrBadRequest, where, v)}
		}
		obj["expire_seconds"] = n
	}
	b, _ := json.Marshal(obj)
	return newItem(where, b)
}

// CreateBatch makes the codes of items, at most batchCalls at a time, and
// returns a result for each in input order. Once WeChat answers 45009 (the
// day's quota is spent) no more are asked for: each remaining code says
// so.
func (s *Service) CreateBatch(ctx context.Context, account string, items []item) []Result {
	results := make([]Result, len(items))
	var quota atomic.Bool
	next := make(chan int)
	var wg sync.WaitGroup
	for range batchCalls {
		wg.Go(func() {
			for i := range next {
				if quota.Load() {
					results[i] = Result{Scene: items[i].scene, Status: http.StatusBadGateway,
						Error: "not made: WeChat answered 45009 to an earlier code of the batch (the day's quota is spent; it resets at midnight Beijing time)"}
					continue
				}
				rctx, cancel := context.WithTimeout(ctx, s.o.RequestTimeout)
				_, created, err := s.Create(rctx, account, items[i].req)
				cancel()
				var we *wechatapi.Error
				if errors.As(err, &we) && we.Code == wechatapi.CodeDailyQuota {
					quota.Store(true)
				}
				results[i] = result(items[i].scene, created, err)
			}
		})
	}
	for i, it := range items {
		if it.err != nil {
			results[i] = result(it.scene, false, it.err)
			continue
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return results
}

// result is a code's outcome as its own POST would have answered it.
func result(scene string, created bool, err error) Result {
	switch {
	case err == nil && created:
		return Result{Scene: scene, Status: http.StatusCreated}
	case err == nil:
		return Result{Scene: scene, Status: http.StatusOK}
	}
	code, body := Problem(err)
	msg := fmt.Sprint(body["error"])
	if body["errcode"] != nil {
		msg += fmt.Sprintf(": errcode %v: %v", body["errcode"], body["errmsg"])
	}
	if h, ok := body["hint"]; ok {
		msg += fmt.Sprintf(" (%v)", h)
	}
	return Result{Scene: scene, Status: code, Error: msg}
}

func (s *Service) batch(w http.ResponseWriter, r *http.Request, account string) {
	const route = "POST /api/qrcodes/batch"
	items, err := ParseBatch(r.Body, r.Header.Get("Content-Type"))
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	results := s.CreateBatch(r.Context(), account, items)
	made := 0
	for _, res := range results {
		if res.Status < 300 {
			made++
		}
	}
	s.o.Logger.Info("qr batch", "account", account, "codes", len(results), "made", made, "failed", len(results)-made)
	admin.WriteJSON(w, http.StatusOK, map[string]any{"results": results})
}

// archive streams a ZIP of the images of account's codes (of one group
// with ?group=G): the newest live code of each scene, named by its label
// or scene, as the image route takes format, size and caption. An expired
// code is left out: it is not to be printed.
func (s *Service) archive(w http.ResponseWriter, r *http.Request, account string) {
	const route = "GET /api/qrcodes/archive.zip"
	group, err := groupParam(r)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	o, caption, err := imageParams(r.URL.Query())
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	all, err := s.all(ctx, account, group)
	cancel()
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	now, seen := s.o.Now(), map[string]bool{}
	var live []Code
	for _, c := range all { // newest first
		if !seen[c.Scene] && !c.Expired(now) {
			seen[c.Scene] = true
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		notFound(w, "no live QR codes to put in an archive")
		return
	}
	for _, c := range live {
		// Checked before the answer starts: a ZIP cut short is a
		// broken download.
		if err := s.o.Fonts.Check(c.name()); caption && err != nil {
			s.fail(w, r, route, err)
			return
		}
	}
	name := "qrcodes"
	if group != nil && *group != "" {
		name += "-" + *group
	}
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", attachment(name, ".zip"))
	zw := zip.NewWriter(w)
	used := map[string]bool{}
	for _, c := range live {
		img := o
		if caption {
			img.Caption = c.name()
		}
		b, err := s.o.Fonts.Render(c.URL, img)
		var f io.Writer
		if err == nil {
			// A name that is not ASCII gets the ZIP's UTF-8 flag (archive/zip
			// sets it), so 门店_北京朝阳.png unpacks under its name.
			f, err = zw.CreateHeader(&zip.FileHeader{Name: unique(used, fileName(c.name()), "."+o.Format), Method: zip.Store, Modified: c.CreatedAt})
		}
		if err == nil {
			_, err = f.Write(b)
		}
		if err != nil {
			s.o.Logger.Warn("qr archive cut short", "account", account, "err", err)
			return
		}
	}
	if err := zw.Close(); err != nil {
		s.o.Logger.Warn("qr archive cut short", "account", account, "err", err)
	}
}

// unique returns name+ext, or name (2)+ext, (3)… when used already.
func unique(used map[string]bool, name, ext string) string {
	n := name + ext
	for i := 2; used[strings.ToLower(n)]; i++ {
		n = fmt.Sprintf("%s (%d)%s", name, i, ext)
	}
	used[strings.ToLower(n)] = true
	return n
}
