// Package nettest holds the small loopback helpers that tests talking to
// real servers share: a free port, a GET's status, a GET's JSON.
package nettest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
)

// FreePort returns a loopback TCP port that was free a moment ago, for a
// child process that must listen where its clients already expect it.
func FreePort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// Status GETs url and returns the status code, 0 when nothing answered.
func Status(url string) int {
	code, _ := status(url)
	return code
}

// CheckStatus returns nil when a GET of url answers want, else an error
// naming what it got: a condition for wait.For.
func CheckStatus(url string, want int) error {
	code, err := status(url)
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("GET %s = %d, want %d", url, code, want)
	}
	return nil
}

func status(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body) // lets the connection be reused
	resp.Body.Close()
	return resp.StatusCode, nil
}

// FetchJSON GETs url and decodes its 200 answer into v: for polls, where
// an answer that is not ready yet is retried.
func FetchJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("GET %s = %d: %s", url, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// GetJSON is FetchJSON that fails the test.
func GetJSON(tb testing.TB, url string, v any) {
	tb.Helper()
	if err := FetchJSON(url, v); err != nil {
		tb.Fatal(err)
	}
}
